//! Where each provider region is, as the provider documents it (its region
//! list names the city or country). A region that is global, anycast, not
//! yet documented or named for no one country has no location: the country
//! database decides for its addresses.
//!
//! Countries are ISO 3166-1 alpha-2, continents come from the same table the
//! country database goes through (`geo::regions`), so a range located here
//! is judged exactly as an address the database puts in that country.
use std::borrow::Cow;

use crate::geo::regions::continent_of;

/// A country and its continent, as two upper-case letters each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Location {
    pub country: [u8; 2],
    pub continent: [u8; 2],
}

impl Location {
    /// The country with its continent from the region table; `None` for a
    /// code that is not a country.
    pub fn of_country(country: &str) -> Option<Self> {
        let continent = continent_of(country)?.as_bytes();
        let c = country.as_bytes();
        Some(Self {
            country: [c[0], c[1]],
            continent: [continent[0], continent[1]],
        })
    }

    pub fn country_code(&self) -> &str {
        std::str::from_utf8(&self.country).unwrap_or("??")
    }

    pub fn continent_code(&self) -> &str {
        std::str::from_utf8(&self.continent).unwrap_or("??")
    }
}

/// (region, country, where the provider says it is).
type Table = &'static [(&'static str, &'static str, &'static str)];

/// AWS's region list (Regions and Zones), GovCloud, China and the European
/// Sovereign Cloud.
const AWS: Table = &[
    ("us-east-1", "US", "N. Virginia"),
    ("us-east-2", "US", "Ohio"),
    ("us-west-1", "US", "N. California"),
    ("us-west-2", "US", "Oregon"),
    ("us-gov-east-1", "US", "GovCloud (US-East)"),
    ("us-gov-west-1", "US", "GovCloud (US-West)"),
    ("us-iso-east-1", "US", "US ISO East"),
    ("us-iso-west-1", "US", "US ISO West"),
    ("us-isob-east-1", "US", "US ISOB East (Ohio)"),
    ("us-isof-east-1", "US", "US ISOF East"),
    ("us-isof-south-1", "US", "US ISOF South"),
    // Not in the region list yet; AWS names only United States regions us-*.
    ("us-south-1", "US", "US South (undocumented)"),
    ("ca-central-1", "CA", "Canada (Central), Montreal"),
    ("ca-west-1", "CA", "Canada West (Calgary)"),
    ("mx-central-1", "MX", "Mexico (Central)"),
    ("sa-east-1", "BR", "South America (São Paulo)"),
    ("eu-central-1", "DE", "Europe (Frankfurt)"),
    ("eu-central-2", "CH", "Europe (Zurich)"),
    ("eu-west-1", "IE", "Europe (Ireland)"),
    ("eu-west-2", "GB", "Europe (London)"),
    ("eu-west-3", "FR", "Europe (Paris)"),
    ("eu-south-1", "IT", "Europe (Milan)"),
    ("eu-south-2", "ES", "Europe (Spain)"),
    ("eu-north-1", "SE", "Europe (Stockholm)"),
    (
        "eusc-de-east-1",
        "DE",
        "AWS European Sovereign Cloud (Brandenburg)",
    ),
    ("il-central-1", "IL", "Israel (Tel Aviv)"),
    ("me-south-1", "BH", "Middle East (Bahrain)"),
    ("me-central-1", "AE", "Middle East (UAE)"),
    ("af-south-1", "ZA", "Africa (Cape Town)"),
    ("ap-east-1", "HK", "Asia Pacific (Hong Kong)"),
    ("ap-east-2", "TW", "Asia Pacific (Taipei)"),
    ("ap-south-1", "IN", "Asia Pacific (Mumbai)"),
    ("ap-south-2", "IN", "Asia Pacific (Hyderabad)"),
    ("ap-southeast-1", "SG", "Asia Pacific (Singapore)"),
    ("ap-southeast-2", "AU", "Asia Pacific (Sydney)"),
    ("ap-southeast-3", "ID", "Asia Pacific (Jakarta)"),
    ("ap-southeast-4", "AU", "Asia Pacific (Melbourne)"),
    ("ap-southeast-5", "MY", "Asia Pacific (Malaysia)"),
    ("ap-southeast-6", "NZ", "Asia Pacific (New Zealand)"),
    ("ap-southeast-7", "TH", "Asia Pacific (Thailand)"),
    ("ap-northeast-1", "JP", "Asia Pacific (Tokyo)"),
    ("ap-northeast-2", "KR", "Asia Pacific (Seoul)"),
    ("ap-northeast-3", "JP", "Asia Pacific (Osaka)"),
    ("cn-north-1", "CN", "China (Beijing)"),
    ("cn-northwest-1", "CN", "China (Ningxia)"),
];

/// Google Cloud's region list (Compute Engine regions and zones).
const GCP: Table = &[
    ("us-central1", "US", "Council Bluffs, Iowa"),
    ("us-east1", "US", "Moncks Corner, South Carolina"),
    ("us-east4", "US", "Ashburn, Virginia"),
    ("us-east5", "US", "Columbus, Ohio"),
    ("us-south1", "US", "Dallas, Texas"),
    ("us-west1", "US", "The Dalles, Oregon"),
    ("us-west2", "US", "Los Angeles, California"),
    ("us-west3", "US", "Salt Lake City, Utah"),
    ("us-west4", "US", "Las Vegas, Nevada"),
    // Not in the public list (TPU and restricted regions); Google names only
    // United States regions us-*.
    ("us-central2", "US", "us-central2 (restricted)"),
    ("us-east7", "US", "us-east7 (restricted)"),
    ("us-west8", "US", "us-west8 (restricted)"),
    ("northamerica-northeast1", "CA", "Montréal, Québec"),
    ("northamerica-northeast2", "CA", "Toronto, Ontario"),
    ("northamerica-south1", "MX", "Querétaro"),
    ("southamerica-east1", "BR", "Osasco, São Paulo"),
    ("southamerica-west1", "CL", "Santiago"),
    ("europe-central2", "PL", "Warsaw"),
    ("europe-north1", "FI", "Hamina"),
    ("europe-north2", "SE", "Stockholm"),
    ("europe-southwest1", "ES", "Madrid"),
    ("europe-west1", "BE", "St. Ghislain"),
    ("europe-west2", "GB", "London"),
    ("europe-west3", "DE", "Frankfurt"),
    ("europe-west4", "NL", "Eemshaven"),
    ("europe-west6", "CH", "Zurich"),
    ("europe-west8", "IT", "Milan"),
    ("europe-west9", "FR", "Paris"),
    ("europe-west10", "DE", "Berlin"),
    ("europe-west12", "IT", "Turin"),
    ("me-central1", "QA", "Doha"),
    ("me-central2", "SA", "Dammam"),
    ("me-west1", "IL", "Tel Aviv"),
    ("africa-south1", "ZA", "Johannesburg"),
    ("asia-east1", "TW", "Changhua County"),
    ("asia-east2", "HK", "Hong Kong"),
    ("asia-northeast1", "JP", "Tokyo"),
    ("asia-northeast2", "JP", "Osaka"),
    ("asia-northeast3", "KR", "Seoul"),
    ("asia-south1", "IN", "Mumbai"),
    ("asia-south2", "IN", "Delhi"),
    ("asia-southeast1", "SG", "Jurong West"),
    ("asia-southeast2", "ID", "Jakarta"),
    ("asia-southeast3", "TH", "Bangkok"),
    ("australia-southeast1", "AU", "Sydney"),
    ("australia-southeast2", "AU", "Melbourne"),
];

/// Azure's region list (`az account list-locations`), the sovereign clouds,
/// and regions the Service Tags file holds that the list does not (yet)
/// show, where the name says the country.
const AZURE: Table = &[
    ("eastus", "US", "East US, Virginia"),
    ("eastus2", "US", "East US 2, Virginia"),
    ("centralus", "US", "Central US, Iowa"),
    ("northcentralus", "US", "North Central US, Illinois"),
    ("southcentralus", "US", "South Central US, Texas"),
    ("westcentralus", "US", "West Central US, Wyoming"),
    ("westus", "US", "West US, California"),
    ("westus2", "US", "West US 2, Washington"),
    ("westus3", "US", "West US 3, Arizona"),
    ("centraluseuap", "US", "Central US EUAP (canary)"),
    ("eastus2euap", "US", "East US 2 EUAP (canary)"),
    // In Service Tags, not in the public list; the name says US.
    ("eastus3", "US", "East US 3"),
    ("northeastus5", "US", "North East US 5"),
    ("southcentralus2", "US", "South Central US 2"),
    ("southeastus", "US", "South East US"),
    ("southeastus3", "US", "South East US 3"),
    ("southeastus5", "US", "South East US 5"),
    ("southwestus", "US", "South West US"),
    ("usstagec", "US", "US staging (central)"),
    ("usstagee", "US", "US staging (east)"),
    ("usgovvirginia", "US", "US Gov Virginia"),
    ("usgovarizona", "US", "US Gov Arizona"),
    ("usgovtexas", "US", "US Gov Texas"),
    ("usgoviowa", "US", "US Gov Iowa"),
    ("usdodcentral", "US", "US DoD Central"),
    ("usdodeast", "US", "US DoD East"),
    ("canadacentral", "CA", "Canada Central, Toronto"),
    ("canadaeast", "CA", "Canada East, Quebec"),
    ("mexicocentral", "MX", "Mexico Central, Querétaro"),
    ("brazilsouth", "BR", "Brazil South, São Paulo State"),
    ("brazilsoutheast", "BR", "Brazil Southeast, Rio"),
    // In Service Tags only; the name says Brazil.
    ("brazilne", "BR", "Brazil Northeast"),
    ("chilecentral", "CL", "Chile Central, Santiago"),
    ("westeurope", "NL", "West Europe, Netherlands"),
    ("northeurope", "IE", "North Europe, Ireland"),
    ("uksouth", "GB", "UK South, London"),
    ("ukwest", "GB", "UK West, Cardiff"),
    ("francecentral", "FR", "France Central, Paris"),
    ("francesouth", "FR", "France South, Marseille"),
    (
        "germanywestcentral",
        "DE",
        "Germany West Central, Frankfurt",
    ),
    ("germanynorth", "DE", "Germany North, Berlin"),
    (
        "germanycentral",
        "DE",
        "Germany Central (Microsoft Cloud Deutschland)",
    ),
    (
        "germanynortheast",
        "DE",
        "Germany Northeast (Microsoft Cloud Deutschland)",
    ),
    ("switzerlandnorth", "CH", "Switzerland North, Zurich"),
    ("switzerlandwest", "CH", "Switzerland West, Geneva"),
    ("norwayeast", "NO", "Norway East, Oslo"),
    ("norwaywest", "NO", "Norway West, Stavanger"),
    ("swedencentral", "SE", "Sweden Central, Gävle"),
    ("swedensouth", "SE", "Sweden South, Malmö"),
    ("polandcentral", "PL", "Poland Central, Warsaw"),
    ("italynorth", "IT", "Italy North, Milan"),
    ("spaincentral", "ES", "Spain Central, Madrid"),
    ("austriaeast", "AT", "Austria East, Vienna"),
    ("belgiumcentral", "BE", "Belgium Central, Brussels"),
    ("denmarkeast", "DK", "Denmark East, Copenhagen"),
    ("israelcentral", "IL", "Israel Central"),
    ("israelnorthwest", "IL", "Israel Northwest"),
    ("qatarcentral", "QA", "Qatar Central, Doha"),
    ("uaenorth", "AE", "UAE North, Dubai"),
    ("uaecentral", "AE", "UAE Central, Abu Dhabi"),
    ("southafricanorth", "ZA", "South Africa North, Johannesburg"),
    ("southafricawest", "ZA", "South Africa West, Cape Town"),
    ("eastasia", "HK", "East Asia, Hong Kong"),
    ("southeastasia", "SG", "Southeast Asia, Singapore"),
    ("japaneast", "JP", "Japan East, Tokyo"),
    ("japanwest", "JP", "Japan West, Osaka"),
    ("koreacentral", "KR", "Korea Central, Seoul"),
    ("koreasouth", "KR", "Korea South, Busan"),
    ("centralindia", "IN", "Central India, Pune"),
    ("southindia", "IN", "South India, Chennai"),
    ("westindia", "IN", "West India, Mumbai"),
    ("jioindiacentral", "IN", "Jio India Central, Nagpur"),
    ("jioindiawest", "IN", "Jio India West, Jamnagar"),
    ("indiasouthcentral", "IN", "India South Central, Hyderabad"),
    ("indonesiacentral", "ID", "Indonesia Central, Jakarta"),
    ("malaysiawest", "MY", "Malaysia West, Kuala Lumpur"),
    ("malaysiasouth", "MY", "Malaysia South, Johor"),
    ("taiwannorth", "TW", "Taiwan North, Taipei"),
    ("taiwannorthwest", "TW", "Taiwan Northwest"),
    ("australiaeast", "AU", "Australia East, New South Wales"),
    ("australiasoutheast", "AU", "Australia Southeast, Victoria"),
    ("australiacentral", "AU", "Australia Central, Canberra"),
    ("australiacentral2", "AU", "Australia Central 2, Canberra"),
    ("newzealandnorth", "NZ", "New Zealand North, Auckland"),
    ("chinaeast", "CN", "China East, Shanghai"),
    ("chinaeast2", "CN", "China East 2, Shanghai"),
    ("chinaeast3", "CN", "China East 3, Shanghai"),
    ("chinanorth", "CN", "China North, Beijing"),
    ("chinanorth2", "CN", "China North 2, Beijing"),
    ("chinanorth3", "CN", "China North 3, Hebei"),
];

/// Azure Service Tags' short region names and the names Azure documents.
const AZURE_ALIASES: &[(&str, &str)] = &[
    ("germanywc", "germanywestcentral"),
    ("germanyn", "germanynorth"),
    ("centralfrance", "francecentral"),
    ("southfrance", "francesouth"),
    ("switzerlandn", "switzerlandnorth"),
    ("switzerlandw", "switzerlandwest"),
    ("norwaye", "norwayeast"),
    ("norwayw", "norwaywest"),
    ("brazilse", "brazilsoutheast"),
    ("chilec", "chilecentral"),
];

/// Oracle Cloud's region list (the region name carries the city).
const ORACLE: Table = &[
    ("us-ashburn-1", "US", "Ashburn"),
    ("us-phoenix-1", "US", "Phoenix"),
    ("us-sanjose-1", "US", "San Jose"),
    ("us-chicago-1", "US", "Chicago"),
    ("us-saltlake-2", "US", "Salt Lake City"),
    ("us-abilene-1", "US", "Abilene"),
    ("us-boardman-1", "US", "Boardman"),
    ("us-dallas-1", "US", "Dallas"),
    ("us-desmoines-1", "US", "Des Moines"),
    ("us-lenexa-1", "US", "Lenexa"),
    ("us-quincy-1", "US", "Quincy"),
    ("us-sanantonio-1", "US", "San Antonio"),
    ("us-shawnee-1", "US", "Shawnee"),
    ("us-langley-1", "US", "Langley (US Government)"),
    ("us-luke-1", "US", "Luke (US Government)"),
    ("us-gov-ashburn-1", "US", "Ashburn (US Government)"),
    ("us-gov-chicago-1", "US", "Chicago (US Government)"),
    ("us-gov-phoenix-1", "US", "Phoenix (US Government)"),
    ("ca-montreal-1", "CA", "Montreal"),
    ("ca-toronto-1", "CA", "Toronto"),
    ("mx-monterrey-1", "MX", "Monterrey"),
    ("mx-queretaro-1", "MX", "Querétaro"),
    ("sa-bogota-1", "CO", "Bogotá"),
    ("sa-saopaulo-1", "BR", "São Paulo"),
    ("sa-vinhedo-1", "BR", "Vinhedo"),
    ("sa-riodejaneiro-2", "BR", "Rio de Janeiro"),
    ("sa-santiago-1", "CL", "Santiago"),
    ("sa-valparaiso-1", "CL", "Valparaíso"),
    ("eu-amsterdam-1", "NL", "Amsterdam"),
    ("eu-frankfurt-1", "DE", "Frankfurt"),
    ("eu-frankfurt-2", "DE", "Frankfurt (EU Sovereign Cloud)"),
    ("eu-madrid-1", "ES", "Madrid"),
    ("eu-madrid-2", "ES", "Madrid (EU Sovereign Cloud)"),
    ("eu-madrid-3", "ES", "Madrid"),
    ("eu-marseille-1", "FR", "Marseille"),
    ("eu-milan-1", "IT", "Milan"),
    ("eu-paris-1", "FR", "Paris"),
    ("eu-stockholm-1", "SE", "Stockholm"),
    ("eu-zurich-1", "CH", "Zurich"),
    ("eu-dublin-3", "IE", "Dublin"),
    ("eu-jovanovac-1", "RS", "Jovanovac, Serbia"),
    ("uk-london-1", "GB", "London"),
    ("uk-cardiff-1", "GB", "Newport, Wales"),
    ("uk-gov-london-1", "GB", "London (UK Government)"),
    ("uk-gov-cardiff-1", "GB", "Cardiff (UK Government)"),
    ("il-jerusalem-1", "IL", "Jerusalem"),
    ("me-abudhabi-1", "AE", "Abu Dhabi"),
    ("me-dubai-1", "AE", "Dubai"),
    ("me-jeddah-1", "SA", "Jeddah"),
    ("me-riyadh-1", "SA", "Riyadh"),
    ("af-johannesburg-1", "ZA", "Johannesburg"),
    ("af-casablanca-1", "MA", "Casablanca"),
    ("ap-tokyo-1", "JP", "Tokyo"),
    ("ap-osaka-1", "JP", "Osaka"),
    ("ap-seoul-1", "KR", "Seoul"),
    ("ap-chuncheon-1", "KR", "Chuncheon"),
    ("ap-mumbai-1", "IN", "Mumbai"),
    ("ap-hyderabad-1", "IN", "Hyderabad"),
    ("ap-delhi-1", "IN", "Delhi"),
    ("ap-singapore-1", "SG", "Singapore"),
    ("ap-singapore-2", "SG", "Singapore"),
    ("ap-batam-1", "ID", "Batam"),
    ("ap-kulai-1", "MY", "Kulai"),
    ("ap-sydney-1", "AU", "Sydney"),
    ("ap-melbourne-1", "AU", "Melbourne"),
];

/// DigitalOcean's datacenter slugs. Its published ranges (the geofeed,
/// RFC 8805) name ISO 3166-2 subdivisions instead (`de-he`), located by
/// their country part in [`location`].
const DIGITALOCEAN: Table = &[
    ("nyc1", "US", "New York"),
    ("nyc2", "US", "New York"),
    ("nyc3", "US", "New York"),
    ("sfo1", "US", "San Francisco"),
    ("sfo2", "US", "San Francisco"),
    ("sfo3", "US", "San Francisco"),
    ("atl1", "US", "Atlanta"),
    ("ric1", "US", "Richmond"),
    ("tor1", "CA", "Toronto"),
    ("ams2", "NL", "Amsterdam"),
    ("ams3", "NL", "Amsterdam"),
    ("lon1", "GB", "London"),
    ("fra1", "DE", "Frankfurt"),
    ("blr1", "IN", "Bangalore"),
    ("sgp1", "SG", "Singapore"),
    ("syd1", "AU", "Sydney"),
];

/// Regions the providers publish that have no location here, and why. The
/// tests check every region of the pinned snapshot is located or listed.
pub const UNLOCATED: &[(&str, &str, &str)] = &[
    (
        "aws",
        "global",
        "CloudFront, Route 53, Global Accelerator: anycast",
    ),
    (
        "aws",
        "me-west-1",
        "not in AWS's region list: Middle East, country unknown",
    ),
    (
        "aws",
        "sa-west-1",
        "not in AWS's region list: South America, country unknown",
    ),
    ("gcp", "global", "global load balancing: anycast"),
    (
        "gcp",
        "europe-west15",
        "not in Google's region list: Europe, country unknown",
    ),
    (
        "azure",
        "",
        "provider-wide tags (AzureCloud, services without a region)",
    ),
    (
        "azure",
        "northeurope2",
        "not in Azure's region list: country unknown",
    ),
    ("cloudflare", "", "Cloudflare publishes no regions: anycast"),
];

/// Every located region of every provider: (provider, region, country).
pub fn table() -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
    [
        ("aws", AWS),
        ("gcp", GCP),
        ("azure", AZURE),
        ("oracle", ORACLE),
        ("digitalocean", DIGITALOCEAN),
    ]
    .into_iter()
    .flat_map(|(provider, table)| table.iter().map(move |(r, c, _)| (provider, *r, *c)))
}

/// The region as this crate names it: lower case, Azure's short Service Tag
/// names replaced by the documented ones.
pub fn canonical_region<'a>(provider: &str, region: &'a str) -> Cow<'a, str> {
    let lower: Cow<str> = if region.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(region.to_ascii_lowercase())
    } else {
        Cow::Borrowed(region)
    };
    if provider == "azure" {
        if let Some((_, long)) = AZURE_ALIASES.iter().find(|(short, _)| *short == lower) {
            return Cow::Borrowed(long);
        }
    }
    lower
}

/// Other names of a canonical region (Azure's short Service Tag names).
pub fn aliases<'a>(provider: &'a str, region: &'a str) -> impl Iterator<Item = &'static str> + 'a {
    AZURE_ALIASES
        .iter()
        .filter(move |(_, long)| provider == "azure" && *long == region)
        .map(|(short, _)| *short)
}

fn table_of(provider: &str) -> Option<Table> {
    Some(match provider {
        "aws" => AWS,
        "gcp" => GCP,
        "azure" => AZURE,
        "oracle" => ORACLE,
        "digitalocean" => DIGITALOCEAN,
        _ => return None,
    })
}

/// The documented location of a provider region, if it has one.
pub fn location(provider: &str, region: &str) -> Option<Location> {
    let region = canonical_region(provider, region);
    let found = table_of(provider)?.iter().find(|(r, _, _)| *r == region);
    if let Some((_, country, _)) = found {
        return Location::of_country(country);
    }
    if provider == "digitalocean" {
        // ISO 3166-2: the country, '-', the subdivision (`de-he`, `us-nj`).
        let (country, subdivision) = region.split_once('-')?;
        if country.len() == 2 && !subdivision.is_empty() {
            return Location::of_country(&country.to_ascii_uppercase());
        }
    }
    None
}

/// Where the provider says the region is, for display.
pub fn description(provider: &str, region: &str) -> Option<&'static str> {
    let region = canonical_region(provider, region);
    table_of(provider)?
        .iter()
        .find(|(r, _, _)| *r == region)
        .map(|(_, _, d)| *d)
}
