//! Draws `top`'s screen from its model.
use ratatui::{
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Paragraph, Row as TableRow, Table},
    Frame,
};

use super::model::{Latest, Rates, Row};
use crate::api::pb;

/// The smallest terminal the screen fits in.
pub const MIN_WIDTH: u16 = 80;
pub const MIN_HEIGHT: u16 = 20;

/// Everything one frame shows.
pub struct Screen<'a> {
    pub target: &'a str,
    pub status: &'a pb::GetStatusResponse,
    pub rates: Rates,
    pub interval: f64,
    pub window_secs: u64,
    pub filters: String,
    pub paused: bool,
    pub destinations: &'a [Row],
    pub workloads: &'a [Row],
    pub latest: &'a Latest,
    /// The last error talking to the daemon (shown, not fatal).
    pub error: &'a str,
}

pub fn draw(f: &mut Frame, s: &Screen) {
    let area = f.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let msg = format!(
            "terminal too small: {}x{}; egress-monitor top needs at least {MIN_WIDTH}x{MIN_HEIGHT} (q quits)",
            area.width, area.height
        );
        f.render_widget(
            Paragraph::new(msg).wrap(ratatui::widgets::Wrap { trim: true }),
            area,
        );
        return;
    }
    let [head, lists, latest] = Layout::vertical([
        Constraint::Length(6),
        Constraint::Min(7),
        Constraint::Length(super::model::LATEST as u16 / 2 + 2),
    ])
    .areas(area);
    draw_head(f, head, s);
    let [dests, works] =
        Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(lists);
    let title = |what: &str| format!(" {what}: attempts in the last {} s ", s.window_secs);
    draw_rows(
        f,
        dests,
        &title("top destinations"),
        "DESTINATION",
        true,
        s.destinations,
    );
    draw_rows(
        f,
        works,
        &title("top workloads"),
        "CGROUP",
        false,
        s.workloads,
    );
    let lines: Vec<Line> = s
        .latest
        .rows
        .iter()
        .map(|e| Line::styled(Latest::line(e), verdict_style(&e.verdict)))
        .collect();
    f.render_widget(
        Paragraph::new(lines).block(
            Block::default()
                .borders(Borders::TOP)
                .title(" latest denials, would-denies and drift alerts "),
        ),
        latest,
    );
}

fn verdict_style(v: &str) -> Style {
    match v {
        "denied" => Style::default().fg(Color::Red),
        "would_deny" => Style::default().fg(Color::Yellow),
        "drift" => Style::default().fg(Color::Magenta),
        _ => Style::default(),
    }
}

fn draw_head(f: &mut Frame, area: Rect, s: &Screen) {
    let st = s.status;
    let c = st.counters.unwrap_or_default();
    let store = st.store.as_ref().map_or("-".to_string(), |x| {
        format!("{} (waiting to be written {})", x.state, x.pending)
    });
    let r = s.rates;
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let lines = vec![
        Line::from(vec![
            Span::styled("egress-monitor top", bold),
            Span::raw(format!(
                "  {}  daemon {}  up {} s  policy generation {}  every {} s{}",
                s.target,
                st.version,
                st.uptime_seconds,
                st.policy_generation,
                s.interval,
                if s.paused { "  PAUSED" } else { "" }
            )),
        ]),
        Line::from(format!(
            "decisions/s  allowed {:.1}  denied {:.1}  would_deny {:.1}  drift alerts {:.1}  | repeats/s {:.1} (answered from the kernel's cache)",
            r.allowed, r.denied, r.would_deny, r.drift, r.repeats
        )),
        Line::from(format!(
            "since start  allowed {}  denied {}  would_deny {}  drift alerts {}  | lost in kernel {}  | store {store}",
            c.allowed, c.denied, c.would_deny, c.drift_alerts, c.lost_in_kernel
        )),
        Line::from(format!("filters      {}", s.filters)),
        Line::styled(
            if s.error.is_empty() {
                "keys         v verdict  p policy  w workload  space pause  q quit".to_string()
            } else {
                format!("error        {}", s.error)
            },
            if s.error.is_empty() {
                Style::default().add_modifier(Modifier::DIM)
            } else {
                Style::default().fg(Color::Red)
            },
        ),
    ];
    f.render_widget(Paragraph::new(lines), area);
}

fn draw_rows(f: &mut Frame, area: Rect, title: &str, what: &str, place: bool, rows: &[Row]) {
    let header = if place {
        TableRow::new([what, "PLACE", "ATTEMPTS", "/S"])
    } else {
        TableRow::new([what, "ATTEMPTS", "/S"])
    }
    .style(Style::default().add_modifier(Modifier::BOLD));
    let body = rows.iter().map(|r| {
        let count = r.count.to_string();
        let rate = format!("{:.2}", r.per_second);
        if place {
            TableRow::new([r.label.clone(), r.place.clone(), count, rate])
        } else {
            TableRow::new([r.label.clone(), count, rate])
        }
    });
    let widths: Vec<Constraint> = if place {
        vec![
            Constraint::Fill(1),
            Constraint::Length(22),
            Constraint::Length(9),
            Constraint::Length(8),
        ]
    } else {
        vec![
            Constraint::Fill(1),
            Constraint::Length(9),
            Constraint::Length(8),
        ]
    };
    f.render_widget(
        Table::new(body, widths).header(header).block(
            Block::default()
                .borders(Borders::TOP)
                .title(title.to_string()),
        ),
        area,
    );
}
