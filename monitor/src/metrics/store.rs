//! The flow store's state as metrics, read from the writer's status at every
//! scrape: whether it is degraded, how far it is behind, what it lost.
use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

use crate::store::writer::{Handle, StoreStatus};

pub struct StoreCollector {
    status: Box<dyn Fn() -> StoreStatus + Send + Sync>,
}

impl std::fmt::Debug for StoreCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreCollector")
    }
}

impl StoreCollector {
    pub fn new(store: Arc<Handle>) -> Self {
        Self::reading(move || store.status())
    }

    fn reading(status: impl Fn() -> StoreStatus + Send + Sync + 'static) -> Self {
        Self {
            status: Box::new(status),
        }
    }
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = (self.status)();
        let gauges: [(&str, &str, i64); 4] = [
            (
                "store_degraded",
                "1 while the flow store cannot be written (status says why): events wait in memory, enforcement continues",
                i64::from(s.state == "degraded"),
            ),
            (
                "store_pending_events",
                "Events handed to the store and not yet written",
                i64::try_from(s.pending).unwrap_or(i64::MAX),
            ),
            (
                "store_pending_event_bytes",
                "Memory the pending events hold (their strings included); allowed decisions are shed beyond 96 MiB",
                i64::try_from(s.pending_bytes).unwrap_or(i64::MAX),
            ),
            (
                "store_size_bytes",
                "Size of the store's database and its write-ahead log",
                i64::try_from(s.size_bytes).unwrap_or(i64::MAX),
            ),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(value);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        let counters: [(&str, &str, u64); 3] = [
            ("store_events_stored", "Events written to the store", s.stored),
            (
                "store_events_lost",
                "Events the store could not take (it was behind, or degraded longer than memory holds)",
                s.lost_for_store,
            ),
            (
                "store_write_errors",
                "Writes to the store that failed",
                s.write_errors,
            ),
        ];
        for (name, help, value) in counters {
            let c = ConstCounter::new(value);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_state_is_rendered_with_the_daemon_prefix() {
        let m = super::super::Metrics::new();
        m.register_collector(Box::new(StoreCollector::reading(|| StoreStatus {
            state: "degraded".into(),
            pending: 12,
            pending_bytes: 15_000,
            stored: 40,
            lost_for_store: 3,
            write_errors: 2,
            size_bytes: 4096,
            ..Default::default()
        })));
        let text = m.render(&super::super::Snapshot::default());
        for line in [
            "egress_monitor_store_degraded 1",
            "egress_monitor_store_pending_events 12",
            "egress_monitor_store_pending_event_bytes 15000",
            "egress_monitor_store_size_bytes 4096",
            "egress_monitor_store_events_stored_total 40",
            "egress_monitor_store_events_lost_total 3",
            "egress_monitor_store_write_errors_total 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
