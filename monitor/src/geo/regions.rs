//! Static region tables: ISO 3166-1 alpha-2 countries with their continent
//! (MaxMind's seven codes), and the named groups a policy may allow.

/// Country code and continent, for every ISO 3166-1 alpha-2 code in use
/// (plus XK, the user-assigned code the registries use for Kosovo).
const COUNTRIES: &str = "\
AD EU AE AS AF AS AG NA AI NA AL EU AM AS AO AF AQ AN AR SA AS OC AT EU AU OC AW NA AX EU AZ AS \
BA EU BB NA BD AS BE EU BF AF BG EU BH AS BI AF BJ AF BL NA BM NA BN AS BO SA BQ NA BR SA BS NA \
BT AS BV AN BW AF BY EU BZ NA CA NA CC AS CD AF CF AF CG AF CH EU CI AF CK OC CL SA CM AF CN AS \
CO SA CR NA CU NA CV AF CW NA CX AS CY EU CZ EU DE EU DJ AF DK EU DM NA DO NA DZ AF EC SA EE EU \
EG AF EH AF ER AF ES EU ET AF FI EU FJ OC FK SA FM OC FO EU FR EU GA AF GB EU GD NA GE AS GF SA \
GG EU GH AF GI EU GL NA GM AF GN AF GP NA GQ AF GR EU GS AN GT NA GU OC GW AF GY SA HK AS HM AN \
HN NA HR EU HT NA HU EU ID AS IE EU IL AS IM EU IN AS IO AS IQ AS IR AS IS EU IT EU JE EU JM NA \
JO AS JP AS KE AF KG AS KH AS KI OC KM AF KN NA KP AS KR AS KW AS KY NA KZ AS LA AS LB AS LC NA \
LI EU LK AS LR AF LS AF LT EU LU EU LV EU LY AF MA AF MC EU MD EU ME EU MF NA MG AF MH OC MK EU \
ML AF MM AS MN AS MO AS MP OC MQ NA MR AF MS NA MT EU MU AF MV AS MW AF MX NA MY AS MZ AF NA AF \
NC OC NE AF NF OC NG AF NI NA NL EU NO EU NP AS NR OC NU OC NZ OC OM AS PA NA PE SA PF OC PG OC \
PH AS PK AS PL EU PM NA PN OC PR NA PS AS PT EU PW OC PY SA QA AS RE AF RO EU RS EU RU EU RW AF \
SA AS SB OC SC AF SD AF SE EU SG AS SH AF SI EU SJ EU SK EU SL AF SM EU SN AF SO AF SR SA SS AF \
ST AF SV NA SX NA SY AS SZ AF TC NA TD AF TF AN TG AF TH AS TJ AS TK OC TL AS TM AS TN AF TO OC \
TR AS TT NA TV OC TW AS TZ AF UA EU UG AF UM OC US NA UY SA UZ AS VA EU VC NA VE SA VG NA VI NA \
VN AS VU OC WF OC WS OC XK EU YE AS YT AF ZA AF ZM AF ZW AF";

pub const CONTINENTS: [&str; 7] = ["AF", "AN", "AS", "EU", "NA", "OC", "SA"];

/// The 27 member states of the European Union.
pub const EU: [&str; 27] = [
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV",
    "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
];

/// EEA members beyond the EU.
const EEA_EXTRA: [&str; 3] = ["IS", "LI", "NO"];

/// Countries with a general EU adequacy decision (GDPR Art. 45) beyond the
/// EEA. The United States is left out on purpose: its decision (the Data
/// Privacy Framework) covers only certified organisations, not the country.
const ADEQUATE_EXTRA: [&str; 14] = [
    "AD", "AR", "CA", "CH", "FO", "GB", "GG", "IL", "IM", "JE", "JP", "KR", "NZ", "UY",
];

/// Named groups a policy may use in `groups:`.
pub const GROUPS: [&str; 3] = ["EU", "EEA", "EU_ADEQUATE"];

/// All known countries with their continent.
pub fn countries() -> impl Iterator<Item = (&'static str, &'static str)> {
    let mut words = COUNTRIES.split_ascii_whitespace();
    std::iter::from_fn(move || Some((words.next()?, words.next()?)))
}

/// The continent of a known country.
pub fn continent_of(country: &str) -> Option<&'static str> {
    countries().find(|(c, _)| *c == country).map(|(_, k)| k)
}

pub fn is_country(code: &str) -> bool {
    continent_of(code).is_some()
}

/// Why `code` (as the user wrote it) is not an ISO 3166-1 alpha-2 country
/// code, with a hint for the codes people reach for that ISO does not use.
/// Policies and query filters refuse with the same words.
pub fn not_a_country(code: &str) -> String {
    let hint = match code.to_ascii_uppercase().as_str() {
        "UK" => "; did you mean GB (the United Kingdom)?",
        "EL" => "; did you mean GR (Greece; EL is the EU's own code)?",
        "EU" => "; the EU is a group: write groups: [EU]",
        "EEA" => "; the EEA is a group: write groups: [EEA]",
        _ => "",
    };
    format!("{code:?} is not an ISO 3166-1 alpha-2 country code{hint}")
}

pub fn is_continent(code: &str) -> bool {
    CONTINENTS.contains(&code)
}

/// Members of a named group, or `None` for an unknown group.
pub fn group_members(group: &str) -> Option<Vec<&'static str>> {
    let mut members: Vec<&'static str> = EU.to_vec();
    match group {
        "EU" => {}
        "EEA" => members.extend(EEA_EXTRA),
        "EU_ADEQUATE" => {
            members.extend(EEA_EXTRA);
            members.extend(ADEQUATE_EXTRA);
        }
        _ => return None,
    }
    Some(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_well_formed_and_sorted() {
        let all: Vec<_> = countries().collect();
        assert!(all.len() > 240, "only {} countries", all.len());
        for w in all.windows(2) {
            assert!(w[0].0 < w[1].0, "{} before {}", w[0].0, w[1].0);
        }
        for (c, k) in &all {
            assert_eq!(c.len(), 2);
            assert!(is_continent(k), "{c} has continent {k}");
        }
    }

    #[test]
    fn groups_hold_known_countries() {
        for g in GROUPS {
            let members = group_members(g).unwrap();
            for m in &members {
                assert!(is_country(m), "{g} member {m} unknown");
            }
        }
        assert_eq!(group_members("EU").unwrap().len(), 27);
        assert_eq!(group_members("EEA").unwrap().len(), 30);
        assert!(!group_members("EU_ADEQUATE").unwrap().contains(&"US"));
        assert!(group_members("NATO").is_none());
    }

    #[test]
    fn continents_of_some_countries() {
        assert_eq!(continent_of("DE"), Some("EU"));
        assert_eq!(continent_of("US"), Some("NA"));
        assert_eq!(continent_of("JP"), Some("AS"));
        assert_eq!(continent_of("BR"), Some("SA"));
        assert_eq!(continent_of("ZZ"), None);
    }
}
