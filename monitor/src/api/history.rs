//! QueryEvents and QueryFlows: the history store, read on a blocking
//! thread with a connection of their own.
use tonic::Status;

use super::{filter::Filter, pb};
use crate::events::Event;
use crate::store::{self, query, time::parse_window, Store};

pub const DEFAULT_LIMIT: u32 = 1000;
pub const MAX_LIMIT: u32 = 100_000;

fn window(w: Option<pb::TimeWindow>) -> Result<(i64, i64), Status> {
    let w = w.unwrap_or_default();
    parse_window(&w.since, &w.until, store::now_nanos())
        .map_err(|(field, why)| Status::invalid_argument(format!("window.{field}: {why}")))
}

fn limit(l: u32) -> Result<usize, Status> {
    match l {
        0 => Ok(DEFAULT_LIMIT as usize),
        l if l > MAX_LIMIT => Err(Status::invalid_argument(format!(
            "limit: {l} is more than {MAX_LIMIT}"
        ))),
        l => Ok(l as usize),
    }
}

/// A page token names the store it came from (a store recreated, or a token
/// from another node, is refused rather than read at a foreign position).
fn token(store: &Store, position: impl std::fmt::Display) -> Result<String, Status> {
    Ok(format!(
        "{}:{position}",
        store.store_id().map_err(internal)?
    ))
}

fn position<T: std::str::FromStr>(store: &Store, token: &str) -> Result<Option<T>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let id = store.store_id().map_err(internal)?;
    let Some((from, at)) = token.split_once(':') else {
        return Err(Status::invalid_argument(
            "page_token: not a token this server gave",
        ));
    };
    if from != id {
        return Err(Status::invalid_argument(format!(
            "page_token: from store {from}, not this one ({id}): start the query again without it"
        )));
    }
    at.parse()
        .map(Some)
        .map_err(|_| Status::invalid_argument("page_token: not a token this server gave"))
}

pub fn open(path: &std::path::Path) -> Result<Store, Status> {
    Store::open_read(path).map_err(|e| Status::unavailable(format!("history store: {e}")))
}

pub fn internal(e: store::StoreError) -> Status {
    if e.is_tampered() {
        return Status::data_loss(format!("history store: {e}"));
    }
    Status::unavailable(format!("history store: {e}"))
}

pub fn query_events(
    path: &std::path::Path,
    req: pb::QueryEventsRequest,
) -> Result<pb::QueryEventsResponse, Status> {
    let (since, until) = window(req.window)?;
    let limit = limit(req.limit)?;
    let filter = Filter::compile(req.filter.unwrap_or_default())?;
    let store = open(path)?;
    let after: i64 = position(&store, &req.page_token)?.unwrap_or(0);
    let (events, more) =
        query::events_where(&store, since, until, after, limit, filter.rows(), &|e| {
            filter.matches(e)
        })
        .map_err(internal)?;
    Ok(pb::QueryEventsResponse {
        next_page_token: match (more, events.last()) {
            (true, Some((seq, _))) => token(&store, seq)?,
            _ => String::new(),
        },
        seqs: events.iter().map(|(s, _)| *s as u64).collect(),
        events: events
            .iter()
            .map(|(seq, e)| pb::Event {
                seq: *seq as u64,
                ..pb::Event::from(e)
            })
            .collect(),
    })
}

/// Stored events with their seqs, where to read on, whether more are there.
pub type ResumePage = (Vec<(i64, Event)>, i64, bool);

/// Events a stream that resumes from the store reads at once, at most.
pub const RESUME_PAGE: usize = 4096;

/// A page of the matching events stored after `after` (a chain seq), for
/// a stream that follows the store: the events with their seqs, the
/// position to read on from (past the events that did not match, up to
/// the head committed when the page was read), and whether more are
/// stored already.
pub fn events_after(store: &Store, filter: &Filter, after: i64) -> Result<ResumePage, Status> {
    let (head, _) = store.head().map_err(internal)?;
    let (events, more) = query::events_where(
        store,
        i64::MIN,
        i64::MAX,
        after,
        RESUME_PAGE,
        filter.rows(),
        &|e| filter.matches(e),
    )
    .map_err(internal)?;
    let cursor = match (more, events.last()) {
        (true, Some((seq, _))) => *seq,
        // Everything up to the head read before the query was looked at.
        _ => head
            .max(after)
            .max(events.last().map_or(after, |(s, _)| *s)),
    };
    Ok((events, cursor, more))
}

pub fn query_flows(
    path: &std::path::Path,
    req: pb::QueryFlowsRequest,
) -> Result<pb::QueryFlowsResponse, Status> {
    let (since, until) = window(req.window)?;
    let limit = limit(req.limit)?;
    let pb_filter = req.filter.unwrap_or_default();
    // Drift alerts are events about a first contact, which its decision
    // counts: no flow has them, so the filter would match nothing.
    if pb_filter.verdicts.iter().any(|v| v == crate::events::DRIFT) {
        return Err(Status::invalid_argument(
            "filter.verdicts: \"drift\" matches no flow (a drift alert is an event about a first contact its decision already counts); ask the events (`events --verdict drift`)",
        ));
    }
    let filter = Filter::compile(pb_filter)?;
    for (i, g) in req.group_by.iter().enumerate() {
        if !query::GROUP_FIELDS.contains(&g.as_str()) {
            return Err(Status::invalid_argument(format!(
                "group_by[{i}]: {g:?} is not one of {}",
                query::GROUP_FIELDS.join(", ")
            )));
        }
    }
    let sort = if req.sort.is_empty() {
        "count"
    } else {
        req.sort.as_str()
    };
    if !query::SORTS.contains(&sort) {
        return Err(Status::invalid_argument(format!(
            "sort: {sort:?} is not one of {}",
            query::SORTS.join(", ")
        )));
    }
    let store = open(path)?;
    let offset: usize = position(&store, &req.page_token)?.unwrap_or(0);
    let keep = |e: &Event| filter.matches(e);
    // Grouped in SQL where the filter and the grouping allow it.
    let grouped = filter
        .flow_sql()
        .and_then(|sql| query::flows_grouped(&store, since, until, &req.group_by, &sql, &keep));
    let mut flows = match grouped {
        Some(flows) => flows.map_err(internal)?,
        // Streamed into the groups: memory follows the groups (or the
        // kept flows), not every flow of the window (a `--verdict denied`
        // over a day of allowed traffic held all of it before).
        None => {
            let mut groups = query::Grouper::new(&req.group_by);
            query::flows_each(
                &store,
                since,
                until,
                &keep,
                filter.by_process(),
                filter.rows(),
                &mut |f| {
                    groups.add(f);
                    Ok(())
                },
            )
            .map_err(|e| match e.downcast::<store::StoreError>() {
                Ok(e) => internal(e),
                Err(e) => Status::internal(format!("history store: {e:#}")),
            })?;
            groups.finish()
        }
    };
    query::sort(&mut flows, sort);
    let total = flows.len();
    let page: Vec<pb::Flow> = flows
        .into_iter()
        .skip(offset)
        .take(limit)
        .map(pb::Flow::from)
        .collect();
    Ok(pb::QueryFlowsResponse {
        next_page_token: if offset + page.len() < total {
            token(&store, offset + page.len())?
        } else {
            String::new()
        },
        flows: page,
        total: total as u64,
    })
}
