//! Per-layer bars of an image pull, drawn from the change stream's
//! `event: progress` while `berth runtime start` waits (on a terminal); one
//! line per layer and status otherwise.

use std::collections::{BTreeSet, HashMap};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Deserialize;

use super::Spinner;

/// One `event: progress`: what Docker reported of a layer.
#[derive(Debug, Deserialize)]
pub struct PullData {
    pub layer: Option<String>,
    pub status: String,
    pub current: Option<u64>,
    pub total: Option<u64>,
}

pub struct PullBars {
    /// Bars under the spinner (a terminal), else lines.
    multi: Option<MultiProgress>,
    bars: HashMap<String, ProgressBar>,
    /// (layer, status) pairs already printed as lines.
    printed: BTreeSet<(String, String)>,
}

/// Docker's statuses after which a layer has nothing more to do.
const DONE: [&str; 2] = ["Pull complete", "Already exists"];

impl PullBars {
    pub fn new(spinner: &Spinner) -> PullBars {
        let multi = spinner.0.as_ref().map(|bar| {
            let multi = MultiProgress::new();
            multi.add(bar.clone());
            multi
        });
        PullBars {
            multi,
            bars: HashMap::new(),
            printed: BTreeSet::new(),
        }
    }

    pub fn show(&mut self, spinner: &Spinner, data: &str) {
        let Ok(p) = serde_json::from_str::<PullData>(data) else {
            return;
        };
        let Some(layer) = p.layer.as_deref().filter(|l| !l.is_empty()) else {
            // "Pulling from …", "Digest: …", "Status: …": once each.
            if self.printed.insert((String::new(), p.status.clone())) {
                spinner.println(&format!("  {}", p.status));
            }
            return;
        };
        let short: String = layer.chars().take(12).collect();
        let Some(multi) = &self.multi else {
            // Not a terminal: a line when a layer's status changes.
            if self.printed.insert((short.clone(), p.status.clone())) {
                spinner.println(&format!("  pull {short}: {}", p.status));
            }
            return;
        };
        let bar = self.bars.entry(short.clone()).or_insert_with(|| {
            let bar = multi.add(ProgressBar::new(0));
            if let Ok(style) = ProgressStyle::with_template(
                "  {prefix} {msg:<16} {bar:30} {bytes:>10}/{total_bytes:<10}",
            ) {
                bar.set_style(style);
            }
            bar.set_prefix(short);
            bar
        });
        if let Some(total) = p.total.filter(|t| *t > 0) {
            bar.set_length(total);
        }
        if let Some(current) = p.current {
            bar.set_position(current);
        }
        bar.set_message(p.status.clone());
        if DONE.contains(&p.status.as_str()) {
            bar.finish();
        }
    }
}
