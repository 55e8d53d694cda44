//! The results: a table of figures against goals (Markdown, printed) and
//! everything measured (JSON).
use std::path::Path;

use serde_json::{json, Value};

pub struct Figure {
    pub name: String,
    pub value: String,
    pub goal: String,
    pub met: Option<bool>,
}

impl Figure {
    pub fn new(name: &str, value: String, goal: &str, met: Option<bool>) -> Self {
        Figure {
            name: name.to_string(),
            value,
            goal: goal.to_string(),
            met,
        }
    }
}

pub struct Report {
    pub figures: Vec<Figure>,
    pub raw: Value,
    /// The command the table comes from.
    pub command: String,
}

/// CPU model, cores and kernel of this machine.
pub fn machine() -> (String, usize, String) {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    (model, cores, kernel)
}

impl Report {
    pub fn new() -> Self {
        Report {
            figures: Vec::new(),
            raw: json!({}),
            command: "cargo xtask bench".into(),
        }
    }

    pub fn fig(&mut self, f: Figure) {
        eprintln!("bench: {}: {}", f.name, f.value);
        self.figures.push(f);
    }

    pub fn markdown(&self) -> String {
        let (model, cores, kernel) = machine();
        let mut md = format!(
            "Machine: {model}, {cores} cores, Linux {kernel}. Command: `{}` \
             (as root; about {:.0} s here).\n\n| figure | value | goal | met? |\n| --- | --- | --- | --- |\n",
            self.command,
            self.raw["bench_seconds"].as_f64().unwrap_or(0.0)
        );
        for f in &self.figures {
            let met = match f.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "-",
            };
            md.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                f.name, f.value, f.goal, met
            ));
        }
        md
    }

    pub fn write(&mut self, dir: &Path) {
        self.write_named(dir, "results");
    }

    /// Writes `STEM.json` and `STEM.md` in `dir`.
    pub fn write_named(&mut self, dir: &Path, stem: &str) {
        let (model, cores, kernel) = machine();
        self.raw["machine"] = json!({"cpu": model, "cores": cores, "kernel": kernel});
        self.raw["figures"] = json!(self
            .figures
            .iter()
            .map(|f| json!({"figure": f.name, "value": f.value, "goal": f.goal, "met": f.met}))
            .collect::<Vec<_>>());
        std::fs::create_dir_all(dir).expect("create the results directory");
        std::fs::write(
            dir.join(format!("{stem}.json")),
            serde_json::to_string_pretty(&self.raw).unwrap(),
        )
        .expect("write the results JSON");
        let md = self.markdown();
        std::fs::write(dir.join(format!("{stem}.md")), &md).expect("write the results table");
        println!("{md}");
        eprintln!("bench: wrote {}/{stem}.json and {stem}.md", dir.display());
    }
}
