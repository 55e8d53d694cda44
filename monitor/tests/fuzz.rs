//! Property tests (CI-sized): no input makes the policy compiler or the
//! event decoder panic, and what they accept they accept consistently.
use std::path::Path;

use monitor::{events, policy};
use proptest::prelude::*;

const POLICY: &str = "apiVersion: egress-monitor.io/v1
kind: EgressPolicy
metadata: {name: p}
spec:
  mode: enforce
  selector: {cgroupPaths: [\"/a\"]}
  allow:
    countries: [DE]
    cidrs: [\"10.0.0.0/8\"]
";

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Arbitrary text: an error with a location, never a panic.
    #[test]
    fn any_text_compiles_or_fails_cleanly(text in "\\PC{0,400}") {
        if let Err(e) = policy::compile_text(Path::new("f.yaml"), &text) {
            prop_assert!(e.to_string().starts_with("f.yaml:"), "{e}");
        }
    }

    /// A valid policy with one byte changed anywhere: still no panic, and
    /// an error names the file.
    #[test]
    fn mutated_policies_fail_cleanly(pos in 0usize..POLICY.len(), byte in any::<u8>()) {
        let mut bytes = POLICY.as_bytes().to_vec();
        bytes[pos] = byte;
        if let Ok(text) = String::from_utf8(bytes) {
            if let Err(e) = policy::compile_text(Path::new("f.yaml"), &text) {
                prop_assert!(e.to_string().starts_with("f.yaml:"), "{e}");
            }
        }
    }

    /// Structured values in every list: codes and CIDRs the compiler must
    /// either accept or reject with a reason.
    #[test]
    fn any_list_values_fail_cleanly(
        countries in proptest::collection::vec("[A-Za-z]{0,3}", 0..4),
        cidrs in proptest::collection::vec("[0-9a-f:./]{0,20}", 0..4),
        glob in "[/*a-z\\[\\]{}!]{0,12}",
    ) {
        let text = format!(
            "apiVersion: egress-monitor.io/v1\nkind: EgressPolicy\nmetadata: {{name: p}}\nspec:\n  mode: monitor\n  selector: {{cgroupPaths: [{glob:?}]}}\n  allow:\n    countries: {countries:?}\n    cidrs: {cidrs:?}\n"
        );
        match policy::compile_text(Path::new("f.yaml"), &text) {
            Ok(p) => prop_assert_eq!(p.len(), 1),
            Err(e) => prop_assert!(e.line >= 1, "{e}"),
        }
    }

    /// Arbitrary ring buffer records: decoded or counted as undecodable.
    #[test]
    fn any_record_decodes_or_fails_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
        let _ = events::decode_record(&bytes);
    }

    /// A DNS record of any content: decoded, and its copy of the message
    /// parsed or refused, never a panic.
    #[test]
    fn any_dns_record_decodes_and_parses_cleanly(mut bytes in proptest::collection::vec(any::<u8>(), 568..=568)) {
        bytes[0..2].copy_from_slice(&monitor_common::kind::DNS.to_ne_bytes());
        bytes[2..4].copy_from_slice(&monitor_common::DNS_VERSION.to_ne_bytes());
        bytes[4..8].copy_from_slice(&568u32.to_ne_bytes());
        let Ok(events::Record::Dns(raw)) = events::decode_record(&bytes) else {
            panic!("a valid DNS header decodes");
        };
        let len = usize::from(raw.payload_len).min(raw.payload.len());
        let _ = monitor::names::parse_answer(&raw.payload[..len]);
    }

    /// A valid header over arbitrary payload decodes to some event, and
    /// enriching it never panics whatever the fields hold.
    #[test]
    fn any_payload_with_a_valid_header_enriches(mut bytes in proptest::collection::vec(any::<u8>(), 128..=128)) {
        bytes[0..2].copy_from_slice(&monitor_common::kind::DECISION.to_ne_bytes());
        bytes[2..4].copy_from_slice(&monitor_common::DECISION_VERSION.to_ne_bytes());
        bytes[4..8].copy_from_slice(&128u32.to_ne_bytes());
        let raw = events::decode(&bytes).expect("a valid header decodes");
        struct N;
        impl events::Names for N {
            fn policy(&self, id: u32) -> String { format!("p{id}") }
            fn cgroup(&mut self, _: u64) -> std::sync::Arc<events::CgroupInfo> { Default::default() }
        }
        let e = events::enrich(&raw, 0, &mut N);
        prop_assert!(serde_json::to_string(&e).is_ok());
    }
}
