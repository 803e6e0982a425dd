//! Fake but plausible people: names, documents, devices, networks and
//! contact details from a small built-in list. Nothing here is real data.

use rand::seq::SliceRandom;
use rand::Rng;
use time::{Date, Duration as Days};

use crate::ids::{self, SimRng};

pub(crate) struct City {
    pub name: &'static str,
    pub state: &'static str,
    pub lat: f64,
    pub lon: f64,
}

pub(crate) struct Country {
    pub a3: &'static str,
    /// A common street name, for addresses.
    pub street: &'static str,
    pub a2: &'static str,
    pub name: &'static str,
    pub phone_prefix: &'static str,
    pub time_zone: &'static str,
    pub tz_offset: &'static str,
    pub cities: &'static [City],
    /// First two octets of residential address blocks.
    pub ip_blocks: &'static [[u8; 2]],
    pub isps: &'static [&'static str],
    pub carriers: &'static [&'static str],
    pub male: &'static [&'static str],
    pub female: &'static [&'static str],
    pub last: &'static [&'static str],
    /// `Identity Card` or `Driver's License` where no national card exists.
    pub national_document: &'static str,
}

macro_rules! city {
    ($name:literal, $state:literal, $lat:literal, $lon:literal) => {
        City {
            name: $name,
            state: $state,
            lat: $lat,
            lon: $lon,
        }
    };
}

pub(crate) static COUNTRIES: &[Country] = &[
    Country {
        a3: "DEU",
        street: "Hauptstraße",
        a2: "DE",
        name: "Germany",
        phone_prefix: "+49",
        time_zone: "Europe/Berlin",
        tz_offset: "+0100",
        cities: &[
            city!("Berlin", "Berlin", 52.52, 13.405),
            city!("Hamburg", "Hamburg", 53.5511, 9.9937),
            city!("München", "Bayern", 48.1351, 11.582),
        ],
        ip_blocks: &[[85, 123], [91, 64], [79, 192]],
        isps: &["Deutsche Telekom AG", "Vodafone GmbH", "Telefonica Germany"],
        carriers: &["Telekom", "Vodafone", "O2"],
        male: &["Jürgen", "Lukas", "Felix", "Jonas", "Stefan", "Matthias"],
        female: &["Anna", "Lea", "Sophie", "Katrin", "Jülide", "Hannah"],
        last: &["Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Groß"],
        national_document: "Identity Card",
    },
    Country {
        a3: "ESP",
        street: "Calle Mayor",
        a2: "ES",
        name: "Spain",
        phone_prefix: "+34",
        time_zone: "Europe/Madrid",
        tz_offset: "+0100",
        cities: &[
            city!("Madrid", "Madrid", 40.4168, -3.7038),
            city!("Barcelona", "Cataluña", 41.3874, 2.1686),
            city!("Sevilla", "Andalucía", 37.3891, -5.9845),
        ],
        ip_blocks: &[[83, 44], [88, 12], [95, 120]],
        isps: &["Telefonica de Espana", "Orange Espagne", "Vodafone Spain"],
        carriers: &["Movistar", "Orange", "Vodafone"],
        male: &["José", "Javier", "Daniel", "Alejandro", "Sergio", "Íñigo"],
        female: &["María", "Lucía", "Carmen", "Paula", "Elena", "Begoña"],
        last: &[
            "García",
            "Fernández",
            "López",
            "Martínez",
            "Sánchez",
            "Núñez",
        ],
        national_document: "Identity Card",
    },
    Country {
        a3: "FRA",
        street: "Rue de la République",
        a2: "FR",
        name: "France",
        phone_prefix: "+33",
        time_zone: "Europe/Paris",
        tz_offset: "+0100",
        cities: &[
            city!("Paris", "Île-de-France", 48.8566, 2.3522),
            city!("Lyon", "Auvergne-Rhône-Alpes", 45.764, 4.8357),
            city!("Marseille", "Provence-Alpes-Côte d'Azur", 43.2965, 5.3698),
        ],
        ip_blocks: &[[90, 3], [86, 201], [109, 7]],
        isps: &["Orange S.A.", "Free SAS", "Bouygues Telecom"],
        carriers: &["Orange", "SFR", "Free Mobile"],
        male: &["François", "Louis", "Hugo", "Théo", "Nicolas", "Julien"],
        female: &["Camille", "Chloé", "Léa", "Manon", "Élodie", "Inès"],
        last: &["Martin", "Bernard", "Dubois", "Lefèvre", "Moreau", "Girard"],
        national_document: "Identity Card",
    },
    Country {
        a3: "ITA",
        street: "Via Roma",
        a2: "IT",
        name: "Italy",
        phone_prefix: "+39",
        time_zone: "Europe/Rome",
        tz_offset: "+0100",
        cities: &[
            city!("Roma", "Lazio", 41.9028, 12.4964),
            city!("Milano", "Lombardia", 45.4642, 9.19),
            city!("Napoli", "Campania", 40.8518, 14.2681),
        ],
        ip_blocks: &[[79, 20], [93, 40], [151, 38]],
        isps: &["Telecom Italia", "Vodafone Italia", "Fastweb"],
        carriers: &["TIM", "Vodafone", "WindTre"],
        male: &["Marco", "Luca", "Niccolò", "Andrea", "Giuseppe", "Matteo"],
        female: &[
            "Giulia",
            "Chiara",
            "Francesca",
            "Sara",
            "Martina",
            "Alessia",
        ],
        last: &["Rossi", "Russo", "Ferrari", "Esposito", "Bianchi", "Romano"],
        national_document: "Identity Card",
    },
    Country {
        a3: "GBR",
        street: "High Street",
        a2: "GB",
        name: "United Kingdom",
        phone_prefix: "+44",
        time_zone: "Europe/London",
        tz_offset: "+0000",
        cities: &[
            city!("London", "England", 51.5072, -0.1276),
            city!("Manchester", "England", 53.4808, -2.2426),
            city!("Edinburgh", "Scotland", 55.9533, -3.1883),
        ],
        ip_blocks: &[[81, 2], [86, 128], [92, 40]],
        isps: &[
            "British Telecommunications PLC",
            "Virgin Media",
            "Sky Broadband",
        ],
        carriers: &["EE", "Vodafone UK", "O2 UK"],
        male: &["Oliver", "George", "Harry", "Jack", "Thomas", "William"],
        female: &["Olivia", "Amelia", "Isla", "Emily", "Charlotte", "Grace"],
        last: &["Smith", "Jones", "Taylor", "Brown", "Wilson", "O'Neill"],
        national_document: "Driver's License",
    },
    Country {
        a3: "NLD",
        street: "Kerkstraat",
        a2: "NL",
        name: "Netherlands",
        phone_prefix: "+31",
        time_zone: "Europe/Amsterdam",
        tz_offset: "+0100",
        cities: &[
            city!("Amsterdam", "North Holland", 52.3676, 4.9041),
            city!("Rotterdam", "South Holland", 51.9244, 4.4777),
            city!("Utrecht", "Utrecht", 52.0907, 5.1214),
        ],
        ip_blocks: &[[84, 24], [77, 160], [145, 53]],
        isps: &["KPN B.V.", "Ziggo B.V.", "T-Mobile Netherlands"],
        carriers: &["KPN", "Vodafone NL", "Odido"],
        male: &["Daan", "Sem", "Bram", "Thijs", "Joris", "Ruben"],
        female: &["Emma", "Julia", "Sanne", "Fleur", "Lotte", "Anouk"],
        last: &[
            "de Jong",
            "Jansen",
            "de Vries",
            "van den Berg",
            "Bakker",
            "Visser",
        ],
        national_document: "Identity Card",
    },
    Country {
        a3: "PRT",
        street: "Rua Augusta",
        a2: "PT",
        name: "Portugal",
        phone_prefix: "+351",
        time_zone: "Europe/Lisbon",
        tz_offset: "+0000",
        cities: &[
            city!("Lisboa", "Lisboa", 38.7223, -9.1393),
            city!("Porto", "Porto", 41.1579, -8.6291),
        ],
        ip_blocks: &[[85, 240], [188, 81], [94, 60]],
        isps: &["MEO", "NOS Comunicacoes", "Vodafone Portugal"],
        carriers: &["MEO", "NOS", "Vodafone PT"],
        male: &["João", "Tiago", "Rui", "Gonçalo", "Miguel", "André"],
        female: &["Inês", "Beatriz", "Ana", "Mariana", "Leonor", "Joana"],
        last: &[
            "Silva",
            "Santos",
            "Ferreira",
            "Pereira",
            "Gonçalves",
            "Simões",
        ],
        national_document: "Identity Card",
    },
    Country {
        a3: "POL",
        street: "ulica Długa",
        a2: "PL",
        name: "Poland",
        phone_prefix: "+48",
        time_zone: "Europe/Warsaw",
        tz_offset: "+0100",
        cities: &[
            city!("Warszawa", "Mazowieckie", 52.2297, 21.0122),
            city!("Kraków", "Małopolskie", 50.0647, 19.945),
        ],
        ip_blocks: &[[83, 21], [89, 64], [178, 36]],
        isps: &["Orange Polska", "Netia SA", "UPC Polska"],
        carriers: &["Orange PL", "Play", "Plus"],
        male: &["Łukasz", "Piotr", "Krzysztof", "Tomasz", "Michał", "Paweł"],
        female: &[
            "Agnieszka",
            "Katarzyna",
            "Małgorzata",
            "Anna",
            "Zofia",
            "Ewa",
        ],
        last: &[
            "Nowak",
            "Kowalski",
            "Wiśniewski",
            "Wójcik",
            "Kamiński",
            "Lewandowski",
        ],
        national_document: "Identity Card",
    },
    Country {
        a3: "USA",
        street: "Main Street",
        a2: "US",
        name: "United States",
        phone_prefix: "+1",
        time_zone: "America/New_York",
        tz_offset: "-0500",
        cities: &[
            city!("New York", "New York", 40.7128, -74.006),
            city!("Chicago", "Illinois", 41.8781, -87.6298),
            city!("Austin", "Texas", 30.2672, -97.7431),
        ],
        ip_blocks: &[[73, 15], [98, 210], [24, 90]],
        isps: &["Comcast Cable", "Charter Communications", "Verizon Fios"],
        carriers: &["Verizon Wireless", "AT&T Mobility", "T-Mobile USA"],
        male: &["James", "Michael", "Ethan", "Daniel", "Noah", "Christopher"],
        female: &["Emily", "Madison", "Ava", "Sophia", "Abigail", "Jessica"],
        last: &[
            "Johnson", "Williams", "Miller", "Davis", "Anderson", "Thompson",
        ],
        national_document: "Driver's License",
    },
    Country {
        a3: "BRA",
        street: "Rua das Flores",
        a2: "BR",
        name: "Brazil",
        phone_prefix: "+55",
        time_zone: "America/Sao_Paulo",
        tz_offset: "-0300",
        cities: &[
            city!("São Paulo", "São Paulo", -23.5505, -46.6333),
            city!("Rio de Janeiro", "Rio de Janeiro", -22.9068, -43.1729),
        ],
        ip_blocks: &[[177, 32], [187, 10], [201, 80]],
        isps: &["Claro S.A.", "Telefonica Brasil", "TIM Brasil"],
        carriers: &["Vivo", "Claro", "TIM"],
        male: &["João", "Gabriel", "Lucas", "Matheus", "Rafael", "Antônio"],
        female: &["Ana", "Júlia", "Larissa", "Camila", "Fernanda", "Letícia"],
        last: &[
            "Oliveira",
            "Souza",
            "Lima",
            "Carvalho",
            "Araújo",
            "Conceição",
        ],
        national_document: "Identity Card",
    },
];

/// Hosting ranges a VPN exit or a data centre presents from.
pub(crate) struct Hosting {
    pub country_a2: &'static str,
    pub country: &'static str,
    pub city: City,
    pub block: [u8; 2],
    pub org: &'static str,
}

pub(crate) static HOSTING: &[Hosting] = &[
    Hosting {
        country_a2: "NL",
        country: "Netherlands",
        city: city!("Amsterdam", "North Holland", 52.3676, 4.9041),
        block: [45, 61],
        org: "Example Hosting BV",
    },
    Hosting {
        country_a2: "US",
        country: "United States",
        city: city!("Ashburn", "Virginia", 39.0438, -77.4874),
        block: [104, 28],
        org: "Cloud Compute LLC",
    },
    Hosting {
        country_a2: "DE",
        country: "Germany",
        city: city!("Frankfurt am Main", "Hessen", 50.1109, 8.6821),
        block: [159, 69],
        org: "Rechenzentrum Nord GmbH",
    },
    Hosting {
        country_a2: "SG",
        country: "Singapore",
        city: city!("Singapore", "Singapore", 1.3521, 103.8198),
        block: [128, 199],
        org: "Asia Edge Pte Ltd",
    },
];

pub(crate) const EMAIL_DOMAINS: &[&str] = &[
    "gmail.com",
    "outlook.com",
    "proton.me",
    "yahoo.com",
    "icloud.com",
    "gmx.net",
];

pub(crate) const DISPOSABLE_EMAIL_DOMAINS: &[&str] =
    &["mailinator.com", "10minutemail.com", "guerrillamail.com"];

/// Everything one person presents to Didit. A session's decision is built
/// from the persona presenting it; the same `vendor_data` keeps the same
/// persona across sessions, so a returning customer shows the same face.
#[derive(Debug, Clone)]
pub(crate) struct Persona {
    pub first_name: String,
    pub last_name: String,
    pub gender: &'static str,
    pub date_of_birth: Date,
    pub country: usize,
    pub city: usize,
    pub document_type: &'static str,
    pub document_number: String,
    pub personal_number: Option<String>,
    pub date_of_issue: Date,
    pub expiration_date: Date,
    /// The face the person shows to the camera.
    pub face: u64,
    /// The face printed on the document (another person's for a stolen one).
    pub document_face: u64,
    pub device_fingerprint: String,
    pub device: (&'static str, &'static str, &'static str, &'static str),
    pub ip_address: String,
    pub isp: &'static str,
    pub phone_number: String,
    pub carrier: &'static str,
    pub email: String,
}

impl Persona {
    pub(crate) fn country(&self) -> &'static Country {
        &COUNTRIES[self.country]
    }

    pub(crate) fn city(&self) -> &'static City {
        &self.country().cities[self.city]
    }

    pub(crate) fn full_name(&self) -> String {
        format!("{} {}", self.first_name, self.last_name)
    }

    pub(crate) fn age_on(&self, today: Date) -> i64 {
        age_on(self.date_of_birth, today)
    }

    /// A postal address in the person's city.
    pub(crate) fn address(&self, number: u32) -> String {
        let c = self.country();
        match c.a3 {
            "GBR" | "USA" => format!("{number} {}, {}", c.street, self.city().name),
            _ => format!("{} {number}, {}", c.street, self.city().name),
        }
    }

    pub(crate) fn full_phone(&self) -> String {
        format!("{}{}", self.country().phone_prefix, self.phone_number)
    }

    /// A fresh adult with a valid document, living in a random country.
    pub(crate) fn generate(rng: &mut SimRng, today: Date) -> Self {
        let country = rng.gen_range(0..COUNTRIES.len());
        let c = &COUNTRIES[country];
        let male = rng.gen_bool(0.5);
        let first = if male { c.male } else { c.female };
        let first_name = pick(rng, first).to_owned();
        let last_name = pick(rng, c.last).to_owned();
        // Ages skew to 25-45, as applicants of consumer services do.
        let age_years = match rng.gen_range(0..10) {
            0 => rng.gen_range(18..25),
            1..=6 => rng.gen_range(25..46),
            7 | 8 => rng.gen_range(46..66),
            _ => rng.gen_range(66..82),
        };
        let date_of_birth = birth_date(rng, today, age_years);
        let document_type = if rng.gen_bool(0.45) {
            "Passport"
        } else if rng.gen_bool(0.85) {
            c.national_document
        } else {
            "Residence Permit"
        };
        let document_number = document_number(rng, c, document_type);
        let personal_number = (c.a3 != "GBR" && c.a3 != "USA").then(|| ids::digits(rng, 9));
        let issued_days_ago = rng.gen_range(200..3000);
        let date_of_issue = today - Days::days(issued_days_ago);
        let validity_years = if document_type == "Residence Permit" {
            5
        } else {
            10
        };
        let mut expiration_date = add_years(date_of_issue, validity_years);
        if expiration_date <= today + Days::days(30) {
            expiration_date = add_years(today, 4);
        }
        let face: u64 = rng.gen();
        let device = pick(rng, DEVICES);
        let block = pick(rng, c.ip_blocks);
        let ip_address = format!(
            "{}.{}.{}.{}",
            block[0],
            block[1],
            rng.gen_range(1..255),
            rng.gen_range(1..255)
        );
        let phone_number = format!("{}{}", rng.gen_range(6..8), ids::digits(rng, 8));
        let email = format!(
            "{}.{}{}@{}",
            ascii_fold(&first_name),
            ascii_fold(&last_name).replace(' ', ""),
            rng.gen_range(1..99),
            pick(rng, EMAIL_DOMAINS)
        );
        Persona {
            first_name,
            last_name,
            gender: if male { "M" } else { "F" },
            date_of_birth,
            country,
            city: rng.gen_range(0..c.cities.len()),
            document_type,
            document_number,
            personal_number,
            date_of_issue,
            expiration_date,
            face,
            document_face: face,
            device_fingerprint: format!("didit-fp-{}", hex::encode(rng.gen::<[u8; 8]>())),
            device,
            ip_address,
            isp: pick(rng, c.isps),
            phone_number,
            carrier: pick(rng, c.carriers),
            email,
        }
    }

    /// Makes the person `years` old (a minor, for the under-age scenario).
    pub(crate) fn set_age(&mut self, rng: &mut SimRng, today: Date, years: i64) {
        self.date_of_birth = birth_date(rng, today, years);
    }

    /// Gives the person a document that expired some time ago.
    pub(crate) fn expire_document(&mut self, rng: &mut SimRng, today: Date) {
        self.expiration_date = today - Days::days(rng.gen_range(12..900));
        let years = if self.document_type == "Residence Permit" {
            5
        } else {
            10
        };
        self.date_of_issue = add_years(self.expiration_date, -years);
    }

    /// A renewed document: new number, valid for years.
    pub(crate) fn renew_document(&mut self, rng: &mut SimRng, today: Date) {
        self.document_number = document_number(rng, self.country(), self.document_type);
        self.date_of_issue = today - Days::days(rng.gen_range(3..40));
        self.expiration_date = add_years(self.date_of_issue, 10);
    }
}

/// (`device_brand`, `device_model`, `os_family`, `platform`).
const DEVICES: &[(&str, &str, &str, &str)] = &[
    ("Apple", "iPhone", "iOS", "mobile"),
    ("Samsung", "SM-S911B", "Android", "mobile"),
    ("Google", "Pixel 8", "Android", "mobile"),
    ("Xiaomi", "Redmi Note 12", "Android", "mobile"),
    ("Apple", "Mac", "Mac OS X", "desktop"),
    ("", "", "Windows", "desktop"),
];

pub(crate) fn pick<T: Copy>(rng: &mut SimRng, items: &[T]) -> T {
    *items.choose(rng).unwrap_or(&items[0])
}

fn document_number(rng: &mut SimRng, c: &Country, document_type: &str) -> String {
    match (c.a3, document_type) {
        ("DEU", "Identity Card") => format!("L{}", ids::alnum(rng, 8).to_ascii_uppercase()),
        ("ESP", "Identity Card") => {
            format!(
                "{}{}",
                ids::digits(rng, 8),
                char::from(b'A' + rng.gen_range(0..26u8))
            )
        }
        ("USA", _) | ("GBR", "Driver's License") => {
            format!(
                "{}{}",
                ids::alnum(rng, 4).to_ascii_uppercase(),
                ids::digits(rng, 8)
            )
        }
        _ => format!(
            "{}{}{}",
            char::from(b'A' + rng.gen_range(0..26u8)),
            char::from(b'A' + rng.gen_range(0..26u8)),
            ids::digits(rng, 7)
        ),
    }
}

/// A birth date that makes the person `years` old on `today`.
fn birth_date(rng: &mut SimRng, today: Date, years: i64) -> Date {
    let base = add_years(today, -years);
    base - Days::days(rng.gen_range(1..360))
}

/// `date` moved by whole years; 29 February falls back to the 28th.
pub(crate) fn add_years(date: Date, years: i64) -> Date {
    let year = date.year() + years as i32;
    Date::from_calendar_date(year, date.month(), date.day())
        .or_else(|_| Date::from_calendar_date(year, date.month(), 28))
        .unwrap_or(date)
}

/// Completed years between `birth` and `today`.
pub(crate) fn age_on(birth: Date, today: Date) -> i64 {
    let mut years = i64::from(today.year() - birth.year());
    if (today.month() as u8, today.day()) < (birth.month() as u8, birth.day()) {
        years -= 1;
    }
    years
}

/// Lower-case ASCII letters for an email local part.
pub(crate) fn ascii_fold(text: &str) -> String {
    text.chars()
        .filter_map(|c| {
            let base = match c {
                'á' | 'à' | 'â' | 'ä' | 'ã' | 'Á' | 'Â' => 'a',
                'é' | 'è' | 'ê' | 'ë' | 'É' | 'È' => 'e',
                'í' | 'ì' | 'î' | 'ï' | 'Í' => 'i',
                'ó' | 'ò' | 'ô' | 'ö' | 'õ' | 'Ó' => 'o',
                'ú' | 'ù' | 'û' | 'ü' | 'Ú' => 'u',
                'ç' => 'c',
                'ñ' => 'n',
                'ß' => 's',
                'ł' | 'Ł' => 'l',
                'ś' | 'Ś' => 's',
                'ź' | 'ż' => 'z',
                'ć' => 'c',
                'ń' => 'n',
                'ę' => 'e',
                'ą' => 'a',
                c if c.is_ascii_alphabetic() => c.to_ascii_lowercase(),
                _ => return None,
            };
            Some(base)
        })
        .collect()
}

/// The upper-case Latin letters of a name, as an MRZ writes them.
fn mrz_name(text: &str) -> String {
    ascii_fold(text).to_ascii_uppercase()
}

fn mrz_check(field: &str) -> char {
    const WEIGHTS: [u32; 3] = [7, 3, 1];
    let sum: u32 = field
        .bytes()
        .enumerate()
        .map(|(i, b)| {
            let v = match b {
                b'0'..=b'9' => u32::from(b - b'0'),
                b'A'..=b'Z' => u32::from(b - b'A') + 10,
                _ => 0,
            };
            v * WEIGHTS[i % 3]
        })
        .sum();
    char::from(b'0' + (sum % 10) as u8)
}

fn pad(text: &str, len: usize) -> String {
    let mut s: String = text.chars().take(len).collect();
    while s.len() < len {
        s.push('<');
    }
    s
}

fn yymmdd(date: Date) -> String {
    format!(
        "{:02}{:02}{:02}",
        date.year().rem_euclid(100),
        date.month() as u8,
        date.day()
    )
}

/// The machine-readable zone: TD3 (two lines of 44) for passports, TD1
/// (three lines of 30) for cards; `None` for driving licences, which have
/// none. Lines are joined with `\n`.
pub(crate) fn mrz(p: &Persona) -> Option<String> {
    let c = p.country();
    let names = format!(
        "{}<<{}",
        mrz_name(&p.last_name).replace(' ', "<"),
        mrz_name(&p.first_name)
    );
    let number: String = p
        .document_number
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_ascii_uppercase();
    let birth = yymmdd(p.date_of_birth);
    let expiry = yymmdd(p.expiration_date);
    match p.document_type {
        "Passport" => {
            let line1 = pad(&format!("P<{}{}", c.a3, names), 44);
            let num = pad(&number, 9);
            let personal = pad(p.personal_number.as_deref().unwrap_or(""), 14);
            let body = format!(
                "{num}{}{}{birth}{}{}{expiry}{}{personal}{}",
                mrz_check(&num),
                c.a3,
                mrz_check(&birth),
                p.gender,
                mrz_check(&expiry),
                mrz_check(&personal),
            );
            let composite = format!(
                "{num}{}{birth}{}{expiry}{}{personal}{}",
                mrz_check(&num),
                mrz_check(&birth),
                mrz_check(&expiry),
                mrz_check(&personal)
            );
            Some(format!("{line1}\n{body}{}", mrz_check(&composite)))
        }
        "Identity Card" | "Residence Permit" => {
            let kind = if p.document_type == "Identity Card" {
                "ID"
            } else {
                "IR"
            };
            let num = pad(&number, 9);
            let line1 = pad(&format!("{kind}{}{num}{}", c.a3, mrz_check(&num)), 30);
            let line2 = pad(
                &format!(
                    "{birth}{}{}{expiry}{}{}",
                    mrz_check(&birth),
                    p.gender,
                    mrz_check(&expiry),
                    c.a3
                ),
                30,
            );
            let line3 = pad(&names, 30);
            Some(format!("{line1}\n{line2}\n{line3}"))
        }
        _ => None,
    }
}

/// Great-circle distance in kilometres.
pub(crate) fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (la1, lo1) = (a.0.to_radians(), a.1.to_radians());
    let (la2, lo2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((la2 - la1) / 2.0).sin().powi(2)
        + la1.cos() * la2.cos() * ((lo2 - lo1) / 2.0).sin().powi(2);
    2.0 * 6371.0 * h.sqrt().asin()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::rng_for;

    fn today() -> Date {
        Date::from_calendar_date(2026, time::Month::March, 31).unwrap()
    }

    #[test]
    fn generated_people_are_adults_with_valid_documents() {
        for i in 0..200 {
            let p = Persona::generate(&mut rng_for(1, "p", &i.to_string()), today());
            assert!(p.age_on(today()) >= 18, "{}", p.age_on(today()));
            assert!(p.expiration_date > today());
            assert!(p.date_of_issue < today());
            assert!(p.email.is_ascii());
        }
    }

    #[test]
    fn ages_count_completed_years() {
        let birth = Date::from_calendar_date(2008, time::Month::April, 1).unwrap();
        assert_eq!(age_on(birth, today()), 17);
        let birth = Date::from_calendar_date(2008, time::Month::March, 31).unwrap();
        assert_eq!(age_on(birth, today()), 18);
    }

    #[test]
    fn mrz_check_digits_follow_icao_9303() {
        // The ICAO 9303 specimen: document number L898902C3, check digit 6.
        assert_eq!(mrz_check("L898902C3"), '6');
        assert_eq!(mrz_check("740812"), '2');
    }

    #[test]
    fn passport_mrz_has_two_lines_of_44() {
        let mut p = Persona::generate(&mut rng_for(3, "p", "x"), today());
        p.document_type = "Passport";
        let mrz = mrz(&p).unwrap();
        let lines: Vec<&str> = mrz.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| l.len() == 44 && l.is_ascii()));
    }

    #[test]
    fn distances_are_in_kilometres() {
        let d = distance_km((40.4168, -3.7038), (52.3676, 4.9041));
        assert!((d - 1480.0).abs() < 20.0, "{d}");
    }
}
