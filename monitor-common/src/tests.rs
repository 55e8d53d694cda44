use core::cell::Cell;

use super::*;

/// Every byte maps to at most one variant, and back to itself.
fn round_trips<E: Copy + PartialEq + core::fmt::Debug + Into<u8>>(
    all: &[E],
    from_u8: fn(u8) -> Option<E>,
) {
    for v in all {
        assert_eq!(from_u8((*v).into()), Some(*v));
    }
    let known = (0..=u8::MAX)
        .filter_map(|b| from_u8(b).map(|v| (b, v)))
        .inspect(|(b, v)| assert_eq!((*v).into(), *b))
        .count();
    assert_eq!(known, all.len());
}

#[test]
fn every_enum_round_trips_through_u8() {
    round_trips(Verdict::ALL, Verdict::from_u8);
    round_trips(Rule::ALL, Rule::from_u8);
    round_trips(Hook::ALL, Hook::from_u8);
    round_trips(Mode::ALL, Mode::from_u8);
    round_trips(Action::ALL, Action::from_u8);
    round_trips(CountrySource::ALL, CountrySource::from_u8);
}

#[test]
fn unknown_bytes_are_none() {
    for b in [0, 4, 255] {
        assert_eq!(Verdict::from_u8(b), None);
        assert_eq!(Verdict::try_from(b), Err(b));
    }
    for b in [0, 10, 255] {
        assert_eq!(Rule::from_u8(b), None);
    }
    for b in [0, 8, 255] {
        assert_eq!(Hook::from_u8(b), None);
    }
    for b in [2, 255] {
        assert_eq!(Mode::from_u8(b), None);
    }
    for b in [0, 3, 255] {
        assert_eq!(Action::from_u8(b), None);
    }
}

#[test]
fn values_and_names_are_the_documented_ones() {
    let verdicts = [(1, "allowed"), (2, "denied"), (3, "would_deny")];
    let rules = [
        (1, "country"),
        (2, "continent"),
        (3, "group"),
        (4, "cidr"),
        (5, "default"),
        (6, "socket"),
        (7, "domain"),
        (8, "cloud_region"),
        (9, "unclassified"),
    ];
    let hooks = [
        (1, "connect4"),
        (2, "connect6"),
        (3, "sendmsg4"),
        (4, "sendmsg6"),
        (5, "egress"),
        (6, "socket_create"),
        (7, "sock_destroy"),
    ];
    let modes = [(0, "monitor"), (1, "enforce")];
    let actions = [(1, "allow"), (2, "deny")];
    let names = |all: &[(u8, &str)], of: &dyn Fn(u8) -> Option<&'static str>| {
        for (b, name) in all {
            assert_eq!(of(*b), Some(*name), "value {b}");
        }
    };
    names(&verdicts, &|b| Verdict::from_u8(b).map(Verdict::as_str));
    names(&rules, &|b| Rule::from_u8(b).map(Rule::as_str));
    names(&hooks, &|b| Hook::from_u8(b).map(Hook::as_str));
    names(&modes, &|b| Mode::from_u8(b).map(Mode::as_str));
    names(&actions, &|b| Action::from_u8(b).map(Action::as_str));
    assert_eq!(Verdict::ALL.len(), verdicts.len());
    assert_eq!(Rule::ALL.len(), rules.len());
    assert_eq!(Hook::ALL.len(), hooks.len());
    assert_eq!(Mode::ALL.len(), modes.len());
    assert_eq!(Action::ALL.len(), actions.len());
}

#[test]
fn the_u8_constants_alias_the_enums() {
    assert_eq!(verdict::ALLOWED, 1);
    assert_eq!(verdict::DENIED, 2);
    assert_eq!(verdict::WOULD_DENY, 3);
    assert_eq!(rule::COUNTRY, 1);
    assert_eq!(rule::CONTINENT, 2);
    assert_eq!(rule::GROUP, 3);
    assert_eq!(rule::CIDR, 4);
    assert_eq!(rule::DEFAULT, 5);
    assert_eq!(rule::SOCKET, 6);
    assert_eq!(hook::CONNECT4, 1);
    assert_eq!(hook::CONNECT6, 2);
    assert_eq!(hook::SENDMSG4, 3);
    assert_eq!(hook::SENDMSG6, 4);
    assert_eq!(hook::EGRESS, 5);
    assert_eq!(hook::SOCK_CREATE, 6);
    assert_eq!(mode::MONITOR, 0);
    assert_eq!(mode::ENFORCE, 1);
    assert_eq!(action::ALLOW, 1);
    assert_eq!(action::DENY, 2);
}

const GENERATIONS: [u32; 6] = [0, 1, 2, 0x7fff_ffff, 0x8000_0000, u32::MAX];

#[test]
fn config_word_round_trips() {
    for policy_slot in 0..2 {
        for geo_slot in 0..2 {
            for cloud_slot in 0..2 {
                for generation in GENERATIONS {
                    let set = InForce {
                        policy_slot,
                        geo_slot,
                        cloud_slot,
                        generation,
                    };
                    assert_eq!(set.pack().unpack(), set);
                }
            }
        }
    }
    assert_eq!(Config::default().unpack(), InForce::default());
}

#[test]
fn config_generation_wraps_within_its_bits() {
    let last = InForce {
        policy_slot: 0,
        geo_slot: 1,
        cloud_slot: 0,
        generation: u32::MAX,
    };
    assert_eq!(last.pack().word, 0xffff_ffff_0000_0002);
    let next = InForce {
        policy_slot: 1,
        generation: last.generation.wrapping_add(1),
        ..last
    };
    // No carry into the slots, nothing past bit 63.
    assert_eq!(next.pack().word, 0b11);
    assert_eq!(
        next.pack().unpack(),
        InForce {
            policy_slot: 1,
            geo_slot: 1,
            cloud_slot: 0,
            generation: 0,
        }
    );
}

#[test]
fn config_fields_are_independent() {
    for generation in GENERATIONS {
        let base = InForce {
            policy_slot: 0,
            geo_slot: 0,
            cloud_slot: 0,
            generation,
        };
        let policy = InForce {
            policy_slot: 1,
            ..base
        };
        let geo = InForce {
            geo_slot: 1,
            ..base
        };
        let cloud = InForce {
            cloud_slot: 1,
            ..base
        };
        assert_eq!(policy.pack().word ^ base.pack().word, 1);
        assert_eq!(geo.pack().word ^ base.pack().word, 2);
        assert_eq!(cloud.pack().word ^ base.pack().word, 4);
        assert_eq!(cloud.pack().unpack().geo_slot, 0);
        assert_eq!(policy.pack().unpack().geo_slot, 0);
        assert_eq!(geo.pack().unpack().policy_slot, 0);
        assert_eq!(geo.pack().unpack().generation, generation);
    }
    // A slot other than 0 or 1 keeps its lowest bit and touches nothing else.
    let odd = InForce {
        policy_slot: 3,
        geo_slot: 2,
        cloud_slot: 0,
        generation: 7,
    };
    assert_eq!(
        odd.pack().unpack(),
        InForce {
            policy_slot: 1,
            geo_slot: 0,
            cloud_slot: 0,
            generation: 7
        }
    );
    // Unused bits 3..32 are ignored when decoding.
    assert_eq!(
        Config {
            word: 0x0000_0005_ffff_fff8
        }
        .unpack(),
        InForce {
            policy_slot: 0,
            geo_slot: 0,
            cloud_slot: 0,
            generation: 5
        }
    );
}

fn region(action: Action, rule: Rule) -> Option<RegionRule> {
    Some(RegionRule {
        action: action as u8,
        rule: rule as u8,
        _pad: [0; 2],
    })
}

/// Runs `decide` with fixed lookup answers (no domain rule) and records
/// which were asked: deny CIDR, region, allow CIDR.
fn run(deny: bool, rule: Option<RegionRule>, allow: bool) -> (Decision, [bool; 3]) {
    let (decision, asked) = run_named(deny, None, rule, allow);
    (decision, [asked[0], asked[2], asked[3]])
}

/// `decide` with a domain answer too; asked: deny CIDR, domain, region,
/// allow CIDR.
fn run_named(
    deny: bool,
    domain: Option<Action>,
    rule: Option<RegionRule>,
    allow: bool,
) -> (Decision, [bool; 4]) {
    let asked = [
        Cell::new(false),
        Cell::new(false),
        Cell::new(false),
        Cell::new(false),
    ];
    let decision = decide(
        || {
            asked[0].set(true);
            deny
        },
        || {
            asked[1].set(true);
            domain.map_or(0, |a| a as u8)
        },
        || {
            asked[2].set(true);
            rule.unwrap_or_default()
        },
        || {
            asked[3].set(true);
            allow
        },
    );
    (decision, asked.map(|c| c.get()))
}

const fn d(allowed: bool, rule: Rule) -> Decision {
    Decision {
        allowed,
        rule: rule as u8,
    }
}

#[test]
fn deny_cidr_wins_over_everything_without_further_lookups() {
    for rule in [None, region(Action::Allow, Rule::Country)] {
        for allow in [false, true] {
            assert_eq!(
                run(true, rule, allow),
                (d(false, Rule::Cidr), [true, false, false])
            );
        }
    }
}

#[test]
fn region_deny_wins_over_an_allowed_cidr_without_searching_it() {
    for allow in [false, true] {
        assert_eq!(
            run(false, region(Action::Deny, Rule::Continent), allow),
            (d(false, Rule::Continent), [true, true, false])
        );
    }
}

#[test]
fn allowed_cidr_beats_a_region_allow_and_the_default() {
    for rule in [None, region(Action::Allow, Rule::Group)] {
        assert_eq!(
            run(false, rule, true),
            (d(true, Rule::Cidr), [true, true, true])
        );
    }
}

#[test]
fn region_allow_applies_when_no_cidr_matched() {
    for rule in [Rule::Country, Rule::Continent, Rule::Group] {
        assert_eq!(
            run(false, region(Action::Allow, rule), false),
            (d(true, rule), [true, true, true])
        );
    }
}

#[test]
fn nothing_allowing_is_a_default_deny() {
    assert_eq!(
        run(false, None, false),
        (d(false, Rule::Default), [true, true, true])
    );
    // A region rule with an action this build does not know decides nothing.
    let unknown = Some(RegionRule {
        action: 0,
        rule: Rule::Country as u8,
        _pad: [0; 2],
    });
    assert_eq!(
        run(false, unknown, false),
        (d(false, Rule::Default), [true, true, true])
    );
    assert_eq!(
        run(false, unknown, true),
        (d(true, Rule::Cidr), [true, true, true])
    );
}

/// The suffix hashes of a name are the hashes of those suffixes as names:
/// what makes `*.salesforce.com` (filed under `salesforce.com`) match
/// `eu1.my.salesforce.com`.
#[test]
fn suffix_hashes_are_the_hashes_of_the_suffixes() {
    let name = dns::name_hashes(b"Eu1.My.SalesForce.com.", 7).unwrap();
    assert_eq!(name, dns::name_hashes(b"eu1.my.salesforce.com", 7).unwrap());
    assert_eq!(name.suffix_count, 3);
    for (k, suffix) in ["com", "salesforce.com", "my.salesforce.com"]
        .iter()
        .enumerate()
    {
        assert_eq!(
            name.suffixes[k],
            dns::name_hashes(suffix.as_bytes(), 7).unwrap().full,
            "{suffix}"
        );
    }
    assert_ne!(name.full, name.suffixes[2]);
    // Different names, different hashes; label boundaries count.
    let a = dns::name_hashes(b"ab.c", 7).unwrap().full;
    let b = dns::name_hashes(b"a.bc", 7).unwrap().full;
    assert_ne!(a, b);
    // A name of one label has no proper suffix.
    assert_eq!(dns::name_hashes(b"localhost", 7).unwrap().suffix_count, 0);
    // Deep names keep only the shortest SUFFIXES suffixes.
    let deep = dns::name_hashes(b"a.b.c.d.e.f.g.h.example.com", 7).unwrap();
    assert_eq!(deep.suffix_count as usize, dns::SUFFIXES);
    assert_eq!(
        deep.suffixes[dns::SUFFIXES - 1],
        dns::name_hashes(b"e.f.g.h.example.com", 7).unwrap().full
    );
}

#[test]
fn names_the_kernel_does_not_read_have_no_hash() {
    for bad in [
        &b""[..],
        b".",
        b"a..b",
        b".a",
        b"a.b..",
        b"1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16.17",
    ] {
        assert_eq!(
            dns::name_hashes(bad, 7),
            None,
            "{:?}",
            core::str::from_utf8(bad)
        );
    }
    assert!(dns::name_hashes(b"1.2.3.4.5.6.7.8.9.10.11.12.13.14.15.16", 7).is_some());
}

/// The key changes every hash: a name's hash under one node's key says
/// nothing about another's.
#[test]
fn keys_change_every_hash() {
    let a = dns::name_hashes(b"api.openai.com", 1).unwrap();
    let b = dns::name_hashes(b"api.openai.com", 2).unwrap();
    assert_ne!(a.full, b.full);
    let n = usize::from(a.suffix_count);
    assert_eq!(n, 2);
    assert!(a.suffixes[..n]
        .iter()
        .zip(&b.suffixes[..n])
        .all(|(x, y)| x != y));
    assert_eq!(a, dns::name_hashes(b"API.openai.com.", 1).unwrap());
}

#[test]
fn cloud_region_ids_ignore_case_and_are_never_zero() {
    let a = cloud::region_id("aws", "eu-central-1");
    assert_eq!(a, cloud::region_id("AWS", "EU-Central-1"));
    assert_ne!(a, cloud::region_id("aws", "eu-central-2"));
    assert_ne!(a, cloud::region_id("gcp", "eu-central-1"));
    assert_ne!(a, 0);
}

/// The documented precedence: deny CIDR, deny domain, deny region, allow
/// CIDR, allow domain, allow region, default deny.
#[test]
fn domain_rules_sit_between_cidrs_and_regions() {
    let allow_de = region(Action::Allow, Rule::Country);
    let deny_us = region(Action::Deny, Rule::Country);
    // A denied name beats an allowed CIDR and an allowed region, and the
    // allow trie is not searched.
    assert_eq!(
        run_named(false, Some(Action::Deny), allow_de, true),
        (d(false, Rule::Domain), [true, true, false, false])
    );
    // A deny CIDR beats an allowed name.
    assert_eq!(
        run_named(true, Some(Action::Allow), None, false),
        (d(false, Rule::Cidr), [true, false, false, false])
    );
    // A denied region beats an allowed name.
    assert_eq!(
        run_named(false, Some(Action::Allow), deny_us, false),
        (d(false, Rule::Country), [true, true, true, false])
    );
    // An allowed name opens an address no region rule allows.
    assert_eq!(
        run_named(false, Some(Action::Allow), None, false),
        (d(true, Rule::Domain), [true, true, true, true])
    );
    // An allowed CIDR is named before an allowed name.
    assert_eq!(
        run_named(false, Some(Action::Allow), None, true),
        (d(true, Rule::Cidr), [true, true, true, true])
    );
    // An allowed name is named before an allowed region.
    assert_eq!(
        run_named(false, Some(Action::Allow), allow_de, false).0,
        d(true, Rule::Domain)
    );
    // An action byte this build does not know decides nothing.
    let (decision, _) = {
        let asked = Cell::new(0);
        let decision = decide(
            || false,
            || 9,
            RegionRule::default,
            || {
                asked.set(1);
                false
            },
        );
        (decision, asked.get())
    };
    assert_eq!(decision, d(false, Rule::Default));
}

#[test]
fn a_deny_of_either_place_beats_an_allow_of_either() {
    let cloud_allow = region(Action::Allow, Rule::CloudRegion);
    let cloud_deny = region(Action::Deny, Rule::CloudRegion);
    let country_allow = region(Action::Allow, Rule::Country);
    let country_deny = region(Action::Deny, Rule::Country);
    let s = |a: Option<RegionRule>, b: Option<RegionRule>| {
        let r = stronger(a.unwrap_or_default(), b.unwrap_or_default());
        (r.action != 0).then_some(r)
    };
    assert_eq!(s(cloud_allow, country_deny), country_deny);
    assert_eq!(s(cloud_deny, country_allow), cloud_deny);
    assert_eq!(s(cloud_deny, country_deny), cloud_deny);
    assert_eq!(s(cloud_allow, country_allow), cloud_allow);
    assert_eq!(s(None, country_allow), country_allow);
    assert_eq!(s(cloud_allow, None), cloud_allow);
    assert_eq!(s(None, None), None);
}
