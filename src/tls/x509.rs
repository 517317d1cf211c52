//! X.509 reading: the few fields of a DER certificate or public key the gateway uses, read
//! without an ASN.1 library.
//!
//! [`Certificate::from_der`] reads a certificate's subject, validity end, public key and
//! subject alternative names; [`Spki::from_der`] reads a SubjectPublicKeyInfo. Nothing here
//! checks a signature or decides trust: client certificates arrive verified by rustls, and a
//! key or certificate in the config is trusted because the config is.
//!
//! # Contract
//!
//! - Never panics, on any input: bytes are taken with `split_*`, lengths are checked before use.
//! - DER only: definite lengths in their shortest form, up to 16 MiB; single-byte tags.
//! - Exact: the input is one element with no trailing bytes, and every structure walked (the
//!   certificate, the tbsCertificate, validity, names, extensions, the SAN) is consumed exactly.
//! - A `Some` result was validated in full for everything its accessors read (subject and
//!   issuer names, both validity times, the SAN, string encodings in the SAN), so the accessors
//!   cannot fail, and a certificate whose SAN is malformed or present twice is `None` as a whole
//!   rather than read as "no SAN".
//! - Not read, so never refused for: the signature, extensions other than subjectAltName,
//!   the contents of `otherName`, `x400Address`, `directoryName`, `ediPartyName` and
//!   `registeredID` SAN entries. basicConstraints is read only by [`Certificate::is_ca`], which
//!   answers `false` when it does not read rather than refusing the certificate.
//!
//! # Subject string ([`Name`]'s `Display`)
//!
//! The RFC 4514 value syntax in certificate order, as x509-parser printed it before:
//! `C=DE, O=Example, CN=alice` — RDNs joined by `, `, the attributes of a multi-valued RDN by
//! ` + `, types by their short names (`CN`, `C`, `L`, `ST`, `O`, `OU`, `DC`, `Email`, `uid`,
//! `serialNumber`, …; see `ATTRIBUTE_NAMES`) and unknown types as dotted decimal
//! (`2.5.4.97=…`). Values are escaped as RFC 4514 §2.4 requires (`,+"\<>;` with a backslash, a
//! leading `#` or space and a trailing space too, control characters as `\XX`), so a value
//! can never pass for a separator: `CN=a\, O=admin` is one attribute. A value that is not a
//! string (or a string whose bytes do not decode) is `#` and the hex of its DER, as RFC 4514
//! §2.4 has it. Strings decode as UTF-8 (every 8-bit string type, as x509-parser did) or
//! UTF-16 (`BMPString`).
//!
//! Regression: `tests::subject_strings`, `tests::truncated_and_garbage_refused`.

use std::fmt::{self, Write as _};

// DER tags (X.680 §8.4 universal class, X.690 §8.1.2 identifier octets).
const BOOLEAN: u8 = 0x01;
const INTEGER: u8 = 0x02;
const BIT_STRING: u8 = 0x03;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const BMP_STRING: u8 = 0x1e;
/// `[0] EXPLICIT` version, `[1]`/`[2] IMPLICIT` unique ids, `[3] EXPLICIT` extensions.
const TBS_VERSION: u8 = 0xa0;
const TBS_ISSUER_UID: u8 = 0x81;
const TBS_SUBJECT_UID: u8 = 0x82;
const TBS_EXTENSIONS: u8 = 0xa3;

/// rsaEncryption, 1.2.840.113549.1.1.1 (the OID's content bytes, as [`Spki::algorithm`] holds).
pub const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// id-ecPublicKey, 1.2.840.10045.2.1.
pub const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// secp256r1 (P-256), 1.2.840.10045.3.1.7.
pub const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// secp384r1 (P-384), 1.3.132.0.34.
pub const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
/// id-Ed25519, 1.3.101.112.
pub const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
/// subjectAltName, 2.5.29.17.
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
/// basicConstraints, 2.5.29.19.
const OID_BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
/// extendedKeyUsage (2.5.29.37).
const OID_EXT_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25];
/// anyExtendedKeyUsage (2.5.29.37.0).
const OID_ANY_EXT_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25, 0x00];
/// id-kp-serverAuth (1.3.6.1.5.5.7.3.1).
pub const OID_KP_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
/// id-kp-clientAuth (1.3.6.1.5.5.7.3.2).
pub const OID_KP_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
/// The first CN of a name is the subject's common name.
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// Attribute type short names: x509-parser's abbreviations, then its registry's names for the
/// attribute types of X.520 and the PKCS#9 and Microsoft ones seen in subjects.
const ATTRIBUTE_NAMES: &[(&[u8], &str)] = &[
    (OID_COMMON_NAME, "CN"),
    (&[0x55, 0x04, 0x06], "C"),
    (&[0x55, 0x04, 0x07], "L"),
    (&[0x55, 0x04, 0x08], "ST"),
    (&[0x55, 0x04, 0x0a], "O"),
    (&[0x55, 0x04, 0x0b], "OU"),
    (
        &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19],
        "DC",
    ),
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01],
        "Email",
    ),
    (
        &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01],
        "uid",
    ),
    (&[0x55, 0x04, 0x00], "objectClass"),
    (&[0x55, 0x04, 0x01], "aliasedEntryName"),
    (&[0x55, 0x04, 0x02], "knowledgeInformation"),
    (&[0x55, 0x04, 0x04], "surname"),
    (&[0x55, 0x04, 0x05], "serialNumber"),
    (&[0x55, 0x04, 0x09], "streetAddress"),
    (&[0x55, 0x04, 0x0c], "title"),
    (&[0x55, 0x04, 0x0d], "description"),
    (&[0x55, 0x04, 0x0e], "searchGuide"),
    (&[0x55, 0x04, 0x0f], "businessCategory"),
    (&[0x55, 0x04, 0x10], "postalAddress"),
    (&[0x55, 0x04, 0x11], "postalCode"),
    (&[0x55, 0x04, 0x29], "name"),
    (&[0x55, 0x04, 0x2a], "givenName"),
    (&[0x55, 0x04, 0x2b], "initials"),
    (&[0x55, 0x04, 0x2c], "generationQualifier"),
    (&[0x55, 0x04, 0x2d], "uniqueIdentifier"),
    (&[0x55, 0x04, 0x2e], "dnQualifier"),
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x02],
        "unstructuredName",
    ),
    (
        &[
            0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x3c, 0x02, 0x01, 0x01,
        ],
        "msJurisdictionLocality",
    ),
    (
        &[
            0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x3c, 0x02, 0x01, 0x02,
        ],
        "msJurisdictionStateOrProvince",
    ),
    (
        &[
            0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37, 0x3c, 0x02, 0x01, 0x03,
        ],
        "msJurisdictionCountry",
    ),
];

/// The fields of a DER X.509 certificate the gateway reads.
#[derive(Debug, Clone, Copy)]
pub struct Certificate<'a> {
    subject: Name<'a>,
    issuer: Name<'a>,
    spki: Spki<'a>,
    not_before: i64,
    not_after: i64,
    /// The contents of the SAN's `GeneralNames`, validated.
    san: Option<&'a [u8]>,
    /// The contents of the `extensions` list, each extension's outer structure validated.
    extensions: &'a [u8],
}

/// An X.501 name (the contents of its `RDNSequence`), validated.
#[derive(Debug, Clone, Copy)]
pub struct Name<'a>(&'a [u8]);

/// A SubjectPublicKeyInfo.
#[derive(Debug, Clone, Copy)]
pub struct Spki<'a> {
    /// The algorithm OID's content bytes (compare with [`OID_RSA_ENCRYPTION`] and the like).
    pub algorithm: &'a [u8],
    /// The algorithm parameters, when they are an OID (an EC key's named curve).
    pub parameter_oid: Option<&'a [u8]>,
    /// The `subjectPublicKey` bits (PKCS#1 for RSA, the point for EC and Ed25519).
    pub key: &'a [u8],
}

/// One subject alternative name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeneralName<'a> {
    /// `dNSName`.
    Dns(&'a str),
    /// `uniformResourceIdentifier`.
    Uri(&'a str),
    /// `rfc822Name`.
    Email(&'a str),
    /// `iPAddress`: 4 or 16 bytes in a well-formed certificate, not checked here.
    Ip(&'a [u8]),
    /// Any other kind, not read.
    Other,
}

/// One DER element.
#[derive(Debug, Clone, Copy)]
struct Tlv<'a> {
    tag: u8,
    /// The contents.
    value: &'a [u8],
    /// The whole encoding: tag, length and contents.
    raw: &'a [u8],
}

/// Reads consecutive DER elements from a byte string.
struct Reader<'a>(&'a [u8]);

// === impl Certificate ===

impl<'a> Certificate<'a> {
    /// Reads a DER certificate; `None` unless it is well-formed (see the module contract).
    pub fn from_der(der: &'a [u8]) -> Option<Self> {
        let mut cert = Reader(Reader::single(der, SEQUENCE)?);
        let mut tbs = Reader(cert.expect(SEQUENCE)?);
        cert.expect(SEQUENCE)?; // signatureAlgorithm
        cert.expect(BIT_STRING)?; // signatureValue
        cert.finish()?;

        if let Some(version) = tbs.optional(TBS_VERSION)?
            && !matches!(Reader::single(version, INTEGER)?, [0..=2])
        {
            return None;
        }
        tbs.expect(INTEGER)?; // serialNumber: any length or sign, as CAs issue them
        tbs.expect(SEQUENCE)?; // signature
        let issuer = Name::new(tbs.expect(SEQUENCE)?)?;
        let mut validity = Reader(tbs.expect(SEQUENCE)?);
        let not_before = time(validity.next()?)?;
        let not_after = time(validity.next()?)?;
        validity.finish()?;
        let subject = Name::new(tbs.expect(SEQUENCE)?)?;
        let spki = Spki::from_contents(tbs.expect(SEQUENCE)?)?;
        tbs.optional(TBS_ISSUER_UID)?;
        tbs.optional(TBS_SUBJECT_UID)?;
        let extensions = match tbs.optional(TBS_EXTENSIONS)? {
            Some(extensions) => Reader::single(extensions, SEQUENCE)?,
            None => &[],
        };
        let san = subject_alt_name(extensions)?;
        tbs.finish()?;
        Some(Self {
            subject,
            issuer,
            spki,
            not_before,
            not_after,
            san,
            extensions,
        })
    }

    /// The subject.
    pub fn subject(&self) -> Name<'a> {
        self.subject
    }

    /// The public key.
    pub fn public_key(&self) -> Spki<'a> {
        self.spki
    }

    /// `notBefore` as Unix time (negative before 1970).
    pub fn not_before(&self) -> i64 {
        self.not_before
    }

    /// `notAfter` as Unix time (negative before 1970).
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// The subject alternative names, in certificate order (none without the extension).
    pub fn subject_alt_names(&self) -> impl Iterator<Item = GeneralName<'a>> + use<'a> {
        let mut names = Reader(self.san.unwrap_or_default());
        // Validated in `from_der`: every element reads.
        std::iter::from_fn(move || names.next().and_then(general_name))
    }

    /// Whether the issuer is the subject (byte for byte): a self-signed certificate, as far
    /// as names tell (the signature is not checked).
    pub fn is_self_issued(&self) -> bool {
        self.issuer.0 == self.subject.0
    }

    /// Whether basicConstraints says this is a CA (`cA` TRUE). `false` without the extension
    /// or when it does not read: for telling a CA from a leaf in a config's trust anchors,
    /// never for deciding trust (rustls does that).
    pub fn is_ca(&self) -> bool {
        let mut extensions = Reader(self.extensions);
        // Validated in `from_der`: each extension is an OID, an optional BOOLEAN and an
        // OCTET STRING.
        while let Some(extension) = extensions.expect(SEQUENCE) {
            let mut extension = Reader(extension);
            if extension.expect(OID) != Some(OID_BASIC_CONSTRAINTS) {
                continue;
            }
            let _critical = extension.optional(BOOLEAN);
            let Some(value) = extension.expect(OCTET_STRING) else {
                return false;
            };
            // BasicConstraints ::= SEQUENCE { cA BOOLEAN DEFAULT FALSE, pathLen INTEGER OPTIONAL }
            let mut constraints = match Reader::single(value, SEQUENCE) {
                Some(c) => Reader(c),
                None => return false,
            };
            return matches!(constraints.optional(BOOLEAN), Some(Some([0xff])));
        }
        false
    }

    /// Whether extendedKeyUsage allows `purpose` (an id-kp OID's content bytes, such as
    /// [`OID_KP_SERVER_AUTH`]): without the extension, or when it lists `purpose` or
    /// anyExtendedKeyUsage. `true` when the extension does not read: for telling an operator
    /// a certificate is unusable, never for deciding trust (rustls does that).
    pub fn allows_purpose(&self, purpose: &[u8]) -> bool {
        let mut extensions = Reader(self.extensions);
        while let Some(extension) = extensions.expect(SEQUENCE) {
            let mut extension = Reader(extension);
            if extension.expect(OID) != Some(OID_EXT_KEY_USAGE) {
                continue;
            }
            let _critical = extension.optional(BOOLEAN);
            // ExtKeyUsageSyntax ::= SEQUENCE SIZE (1..MAX) OF KeyPurposeId
            let Some(mut purposes) = extension
                .expect(OCTET_STRING)
                .and_then(|v| Reader::single(v, SEQUENCE))
                .map(Reader)
            else {
                return true;
            };
            while let Some(oid) = purposes.expect(OID) {
                if oid == purpose || oid == OID_ANY_EXT_KEY_USAGE {
                    return true;
                }
            }
            return false;
        }
        true
    }
}

/// The contents of the one subjectAltName extension's `GeneralNames` (validated), if any.
/// `None` when the extensions are malformed or hold two SANs; `Some(None)` without one.
fn subject_alt_name(extensions: &[u8]) -> Option<Option<&[u8]>> {
    let mut extensions = Reader(extensions);
    let mut san = None;
    while !extensions.is_empty() {
        let mut extension = Reader(extensions.expect(SEQUENCE)?);
        let id = extension.expect(OID)?;
        extension.optional(BOOLEAN)?; // critical
        let value = extension.expect(OCTET_STRING)?;
        extension.finish()?;
        if id == OID_SUBJECT_ALT_NAME {
            if san.is_some() {
                // Why: two SANs would be read differently by different readers.
                return None;
            }
            let names = Reader::single(value, SEQUENCE)?;
            let mut check = Reader(names);
            while !check.is_empty() {
                general_name(check.next()?)?;
            }
            san = Some(names);
        }
    }
    Some(san)
}

fn general_name(t: Tlv<'_>) -> Option<GeneralName<'_>> {
    // Context-specific tags of `GeneralName` (RFC 5280 §4.2.1.6); the strings are IA5String,
    // read as UTF-8 as x509-parser did (some issuers put Unicode there).
    let text = || std::str::from_utf8(t.value).ok();
    Some(match t.tag {
        0x81 => GeneralName::Email(text()?),
        0x82 => GeneralName::Dns(text()?),
        0x86 => GeneralName::Uri(text()?),
        0x87 => GeneralName::Ip(t.value),
        // otherName, x400Address, directoryName, ediPartyName (constructed), registeredID.
        0xa0 | 0xa3 | 0xa4 | 0xa5 | 0x88 => GeneralName::Other,
        _ => return None,
    })
}

/// A UTCTime (`YYMMDDHHMMSSZ`, years 1950–2049) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) as
/// Unix time: the two forms RFC 5280 §4.1.2.5 allows, and the only ones rustls accepts.
fn time(t: Tlv<'_>) -> Option<i64> {
    let (year, rest) = match t.tag {
        UTC_TIME => {
            let (yy, rest) = t.value.split_first_chunk::<2>()?;
            let yy = digits(yy)?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, rest)
        }
        GENERALIZED_TIME => {
            let (yyyy, rest) = t.value.split_first_chunk::<4>()?;
            (digits(yyyy)?, rest)
        }
        _ => return None,
    };
    let [mo, mo2, d, d2, h, h2, mi, mi2, s, s2, b'Z'] = *rest else {
        return None;
    };
    let (month, day) = (digits(&[mo, mo2])?, digits(&[d, d2])?);
    let (hour, minute, second) = (digits(&[h, h2])?, digits(&[mi, mi2])?, digits(&[s, s2])?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if !(1..=month_days).contains(&day) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// ASCII decimal digits as a number.
fn digits(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0, |n, c| {
        c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
    })
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// === impl Name ===

impl<'a> Name<'a> {
    /// Validates the contents of an `RDNSequence`.
    fn new(rdns: &'a [u8]) -> Option<Self> {
        let name = Self(rdns);
        name.walk(|_, oid, _| dotted_ok(oid).then_some(()))?;
        Some(name)
    }

    /// The first common name, when it is a NumericString, PrintableString, UTF8String or
    /// IA5String in UTF-8 (as x509-parser's `as_str` read it); a later CN is never tried.
    ///
    /// Why every string type the subject's text reads: a CN in a `BMPString` or
    /// `TeletexString` (older CAs write them) was no name, and the certificate no principal,
    /// while the subject showed it. Regression: tests::common_name
    pub fn common_name(&self) -> Option<std::borrow::Cow<'a, str>> {
        let mut first = None;
        self.walk(|_, oid, value| {
            if first.is_none() && oid == OID_COMMON_NAME {
                first = Some(value);
            }
            Some(())
        })?;
        decode_string(first?)
    }

    /// Calls `f(first_of_its_rdn, type_oid, value)` for each attribute in order; `None` when
    /// the name is malformed or `f` says so.
    fn walk(&self, mut f: impl FnMut(bool, &'a [u8], Tlv<'a>) -> Option<()>) -> Option<()> {
        let mut rdns = Reader(self.0);
        while !rdns.is_empty() {
            let mut set = Reader(rdns.expect(SET)?);
            if set.is_empty() {
                return None;
            }
            let mut first = true;
            while !set.is_empty() {
                let mut attribute = Reader(set.expect(SEQUENCE)?);
                let oid = attribute.expect(OID)?;
                let value = attribute.next()?;
                attribute.finish()?;
                f(first, oid, value)?;
                first = false;
            }
        }
        Some(())
    }
}

impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        let mut started = false;
        // Validated in `new`: the walk and every OID read.
        self.walk(|first, oid, value| {
            if started {
                out.push_str(if first { ", " } else { " + " });
            }
            started = true;
            match ATTRIBUTE_NAMES.iter().find(|(o, _)| *o == oid) {
                Some((_, short)) => out.push_str(short),
                None => write_dotted(&mut out, oid),
            }
            out.push('=');
            match decode_string(value) {
                Some(s) => escape_value(&mut out, &s),
                None => {
                    out.push('#');
                    write_hex(&mut out, value.raw);
                }
            }
            Some(())
        });
        f.write_str(&out)
    }
}

/// The text of a string-typed attribute value, `None` for other types or undecodable bytes.
fn decode_string(t: Tlv<'_>) -> Option<std::borrow::Cow<'_, str>> {
    match t.tag {
        // ObjectDescriptor, UTF8String, Numeric, Printable, T61, Videotex, IA5, Graphic,
        // Visible and General strings: x509-parser's list, each read as UTF-8.
        0x07 | 0x0c | 0x12 | 0x13 | 0x14 | 0x15 | 0x16 | 0x19 | 0x1a | 0x1b => {
            std::str::from_utf8(t.value).ok().map(Into::into)
        }
        BMP_STRING => {
            let (units, []) = t.value.as_chunks::<2>() else {
                return None;
            };
            char::decode_utf16(units.iter().map(|u| u16::from_be_bytes(*u)))
                .collect::<Result<String, _>>()
                .ok()
                .map(Into::into)
        }
        _ => None,
    }
}

/// RFC 4514 §2.4 escaping of an attribute value.
fn escape_value(out: &mut String, s: &str) {
    for (i, c) in s.char_indices() {
        let edge = i == 0 || i + c.len_utf8() == s.len();
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if edge => out.push_str("\\ "),
            c if c.is_control() => {
                let mut buf = [0; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push('\\');
                    write_hex(out, &[b]);
                }
            }
            c => out.push(c),
        }
    }
}

fn write_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        let _ = write!(out, "{b:02X}");
    }
}

/// The arcs of an OID's content bytes; `None` when malformed (empty, unterminated, an arc not
/// in its shortest form or over `u64`).
fn oid_arcs(oid: &[u8]) -> Option<Vec<u64>> {
    if oid.last().is_none_or(|b| b & 0x80 != 0) {
        return None;
    }
    let mut arcs = Vec::with_capacity(oid.len() + 1);
    let mut arc: u64 = 0;
    let mut fresh = true;
    for &b in oid {
        if fresh && b == 0x80 {
            return None;
        }
        arc = arc.checked_mul(128)? | u64::from(b & 0x7f);
        fresh = b & 0x80 == 0;
        if fresh {
            if arcs.is_empty() {
                let first = (arc / 40).min(2);
                arcs.push(first);
                arcs.push(arc - first * 40);
            } else {
                arcs.push(arc);
            }
            arc = 0;
        }
    }
    Some(arcs)
}

fn dotted_ok(oid: &[u8]) -> bool {
    oid_arcs(oid).is_some()
}

fn write_dotted(out: &mut String, oid: &[u8]) {
    for (i, arc) in oid_arcs(oid).unwrap_or_default().iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        let _ = write!(out, "{arc}");
    }
}

// === impl Spki ===

impl<'a> Spki<'a> {
    /// Reads a DER SubjectPublicKeyInfo; `None` unless well-formed, with a whole number of key
    /// bits.
    pub fn from_der(der: &'a [u8]) -> Option<Self> {
        Self::from_contents(Reader::single(der, SEQUENCE)?)
    }

    fn from_contents(contents: &'a [u8]) -> Option<Self> {
        let mut spki = Reader(contents);
        let mut algorithm_id = Reader(spki.expect(SEQUENCE)?);
        let algorithm = algorithm_id.expect(OID)?;
        let parameters = if algorithm_id.is_empty() {
            None
        } else {
            Some(algorithm_id.next()?)
        };
        algorithm_id.finish()?;
        let bits = spki.expect(BIT_STRING)?;
        spki.finish()?;
        let (&0, key) = bits.split_first()? else {
            return None;
        };
        Some(Self {
            algorithm,
            parameter_oid: parameters.filter(|p| p.tag == OID).map(|p| p.value),
            key,
        })
    }
}

/// The first DER element of `bytes` (tag, length and contents), ignoring what follows: for
/// telling whether some bytes start with a key or a certificate.
pub fn first_element(bytes: &[u8]) -> Option<&[u8]> {
    Reader(bytes).next().map(|t| t.raw)
}

// === impl Reader ===

impl<'a> Reader<'a> {
    /// The contents of `der`, which must be exactly one element tagged `tag`.
    fn single(der: &'a [u8], tag: u8) -> Option<&'a [u8]> {
        let mut r = Self(der);
        let value = r.expect(tag)?;
        r.finish()?;
        Some(value)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Some` when everything was read.
    fn finish(&self) -> Option<()> {
        self.is_empty().then_some(())
    }

    /// The next element; `None` at the end or when it is malformed.
    fn next(&mut self) -> Option<Tlv<'a>> {
        let input = self.0;
        let (&tag, rest) = input.split_first()?;
        if tag & 0x1f == 0x1f {
            return None; // high tag numbers: nothing read here uses them
        }
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = match first {
            n if n < 0x80 => (usize::from(n), rest),
            0x81 => {
                let (&n, rest) = rest.split_first()?;
                (usize::from(n), rest)
            }
            0x82 => {
                let (&[a, b], rest) = rest.split_first_chunk::<2>()?;
                ((usize::from(a) << 8) | usize::from(b), rest)
            }
            0x83 => {
                let (&[a, b, c], rest) = rest.split_first_chunk::<3>()?;
                (
                    (usize::from(a) << 16) | (usize::from(b) << 8) | usize::from(c),
                    rest,
                )
            }
            // Indefinite (BER only) and lengths past 16 MiB.
            _ => return None,
        };
        // DER: the length in the fewest octets.
        let min = match first {
            0x81 => 0x80,
            0x82 => 0x100,
            0x83 => 0x1_0000,
            _ => 0,
        };
        if len < min {
            return None;
        }
        let (value, rest) = rest.split_at_checked(len)?;
        let (raw, _) = input.split_at_checked(input.len() - rest.len())?;
        self.0 = rest;
        Some(Tlv { tag, value, raw })
    }

    /// The contents of the next element, which must be tagged `tag`.
    fn expect(&mut self, tag: u8) -> Option<&'a [u8]> {
        self.next().filter(|t| t.tag == tag).map(|t| t.value)
    }

    /// The contents of the next element if it is tagged `tag`; `None` when it is malformed.
    fn optional(&mut self, tag: u8) -> Option<Option<&'a [u8]>> {
        match self.0.first() {
            Some(&t) if t == tag => self.expect(tag).map(Some),
            _ => Some(None),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
