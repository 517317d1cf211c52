use rcgen::string::{BmpString, Ia5String, PrintableString, TeletexString};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, DnValue, KeyPair, OtherNameValue,
    PublicKeyData as _, SanType,
};

use super::*;

/// A DER element (short or long form length; other tests build DER with it too).
pub(crate) fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match value.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n < 0x100 => out.extend([0x81, n as u8]),
        n => out.extend([0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(value);
    out
}

/// An attribute: type OID, value tag, value.
type Attribute<'a> = (&'a [u8], u8, &'a [u8]);

/// The contents of a `Name` whose RDNs hold these attributes.
fn name(rdns: &[&[Attribute<'_>]]) -> Vec<u8> {
    let mut out = Vec::new();
    for rdn in rdns {
        let mut set = Vec::new();
        for (oid, tag, value) in *rdn {
            set.extend(tlv(SEQUENCE, &[tlv(OID, oid), tlv(*tag, value)].concat()));
        }
        out.extend(tlv(SET, &set));
    }
    out
}

const UTF8: u8 = 0x0c;
const PRINTABLE: u8 = 0x13;
const CN: &[u8] = OID_COMMON_NAME;
const OU: &[u8] = &[0x55, 0x04, 0x0b];
const O: &[u8] = &[0x55, 0x04, 0x0a];

/// A self-signed certificate made by rcgen, with no subject unless `f` adds one.
fn rcgen_cert(f: impl FnOnce(&mut CertificateParams)) -> Vec<u8> {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = DistinguishedName::new();
    f(&mut p);
    p.self_signed(&key).unwrap().der().to_vec()
}

fn everything_cert() -> Vec<u8> {
    rcgen_cert(|p| {
        let dn = &mut p.distinguished_name;
        dn.push(DnType::CountryName, "DE");
        dn.push(DnType::OrganizationName, "Example, Inc.");
        dn.push(
            DnType::OrganizationalUnitName,
            DnValue::BmpString(BmpString::try_from("Grüße").unwrap()),
        );
        dn.push(DnType::CommonName, "alice");
        dn.push(
            DnType::CustomDnType(vec![0, 9, 2342, 19200300, 100, 1, 1]),
            DnValue::Ia5String(Ia5String::try_from("alice").unwrap()),
        );
        dn.push(
            DnType::CustomDnType(vec![0, 9, 2342, 19200300, 100, 1, 25]),
            DnValue::Ia5String(Ia5String::try_from("example").unwrap()),
        );
        dn.push(
            DnType::CustomDnType(vec![1, 2, 840, 113549, 1, 9, 1]),
            DnValue::Ia5String(Ia5String::try_from("alice@example.test").unwrap()),
        );
        dn.push(
            DnType::CustomDnType(vec![2, 5, 4, 5]),
            DnValue::PrintableString(PrintableString::try_from("42").unwrap()),
        );
        dn.push(
            DnType::CustomDnType(vec![2, 5, 4, 12]),
            DnValue::TeletexString(TeletexString::try_from("Dr").unwrap()),
        );
        dn.push(DnType::CustomDnType(vec![2, 5, 4, 97]), "VATDE-123");
        p.subject_alt_names = vec![
            SanType::DnsName("a.example.test".try_into().unwrap()),
            SanType::URI("spiffe://corp.test/billing".try_into().unwrap()),
            SanType::Rfc822Name("alice@example.test".try_into().unwrap()),
            SanType::IpAddress("192.0.2.7".parse().unwrap()),
            SanType::IpAddress("2001:db8::1".parse().unwrap()),
            SanType::OtherName((
                vec![1, 3, 6, 1, 4, 1, 311, 20, 2, 3],
                OtherNameValue::Utf8String("alice@corp".into()),
            )),
            SanType::DnsName("b.example.test".try_into().unwrap()),
        ];
        p.not_before = rcgen::date_time_ymd(2024, 3, 1);
        p.not_after = rcgen::date_time_ymd(2030, 1, 1);
    })
}

#[test]
fn rcgen_certificate_with_every_san_kind() {
    let der = everything_cert();
    let cert = Certificate::from_der(&der).unwrap();
    assert_eq!(
        cert.subject().to_string(),
        "C=DE, O=Example\\, Inc., OU=Grüße, CN=alice, uid=alice, DC=example, \
         Email=alice@example.test, serialNumber=42, title=Dr, 2.5.4.97=VATDE-123"
    );
    assert_eq!(cert.subject().common_name().as_deref(), Some("alice"));
    assert_eq!(
        cert.subject_alt_names().collect::<Vec<_>>(),
        [
            GeneralName::Dns("a.example.test"),
            GeneralName::Uri("spiffe://corp.test/billing"),
            GeneralName::Email("alice@example.test"),
            GeneralName::Ip(&[192, 0, 2, 7]),
            GeneralName::Ip(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            GeneralName::Other,
            GeneralName::Dns("b.example.test"),
        ]
    );
    // 2024-03-01T00:00:00Z and 2030-01-01T00:00:00Z, UTCTimes.
    assert_eq!(cert.not_before(), 1_709_251_200);
    assert_eq!(cert.not_after(), 1_893_456_000);
    assert_eq!(cert.public_key().algorithm, OID_EC_PUBLIC_KEY);
    assert_eq!(cert.public_key().parameter_oid, Some(OID_P256));
}

#[test]
fn certificate_without_san_or_subject() {
    let der = rcgen_cert(|p| p.not_after = rcgen::date_time_ymd(2051, 6, 15));
    let cert = Certificate::from_der(&der).unwrap();
    assert_eq!(cert.subject_alt_names().count(), 0);
    assert_eq!(cert.subject().to_string(), "");
    assert_eq!(cert.subject().common_name(), None);
    // 2051-06-15T00:00:00Z, a GeneralizedTime (RFC 5280: from 2050 on).
    assert_eq!(cert.not_after(), 2_570_400_000);
}

#[test]
fn subject_strings() {
    let bmp = |s: &str| {
        s.encode_utf16()
            .flat_map(u16::to_be_bytes)
            .collect::<Vec<u8>>()
    };
    let cases: &[(&str, Vec<u8>, &str)] = &[
        ("empty", name(&[]), ""),
        ("one", name(&[&[(CN, UTF8, b"alice")]]), "CN=alice"),
        (
            "multi-valued RDN",
            name(&[
                &[(O, UTF8, b"Example")],
                &[(CN, UTF8, b"alice"), (OU, PRINTABLE, b"Dev")],
            ]),
            "O=Example, CN=alice + OU=Dev",
        ),
        (
            "specials",
            name(&[&[(CN, UTF8, b"a,b+c\"d\\e<f>g;h")]]),
            "CN=a\\,b\\+c\\\"d\\\\e\\<f\\>g\\;h",
        ),
        (
            "a separator inside a value",
            name(&[&[(CN, UTF8, b"x, O=admin")]]),
            "CN=x\\, O=admin",
        ),
        ("leading #", name(&[&[(CN, UTF8, b"#x#")]]), "CN=\\#x#"),
        (
            "leading and trailing space",
            name(&[&[(CN, UTF8, b" a b ")]]),
            "CN=\\ a b\\ ",
        ),
        ("one space", name(&[&[(CN, UTF8, b" ")]]), "CN=\\ "),
        (
            "control characters",
            name(&[&[(CN, UTF8, b"a\0b\nc\x7f")]]),
            "CN=a\\00b\\0Ac\\7F",
        ),
        ("equals sign", name(&[&[(CN, UTF8, b"a=b")]]), "CN=a=b"),
        (
            "BMPString",
            name(&[&[(CN, BMP_STRING, &bmp("Zoë"))]]),
            "CN=Zoë",
        ),
        (
            "odd BMPString",
            name(&[&[(CN, BMP_STRING, b"\x00a\x00")]]),
            "CN=#1E03006100",
        ),
        (
            "invalid UTF-8",
            name(&[&[(CN, UTF8, b"\xff")]]),
            "CN=#0C01FF",
        ),
        (
            "not a string",
            name(&[&[(CN, INTEGER, b"\x01")]]),
            "CN=#020101",
        ),
        (
            "unknown type",
            name(&[&[(
                &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x83, 0xa6, 0x12, 0x01],
                UTF8,
                b"x",
            )]]),
            "1.3.6.1.4.1.54034.1=x",
        ),
        (
            "joint-iso arc",
            name(&[&[(&[0x88, 0x37, 0x01], UTF8, b"x")]]),
            "2.999.1=x",
        ),
    ];
    for (what, der, want) in cases {
        let n = Name::new(der).unwrap_or_else(|| panic!("{what}: refused"));
        assert_eq!(n.to_string(), *want, "{what}");
    }
}

#[test]
fn common_name() {
    let cases: &[(&str, Vec<u8>, Option<&str>)] = &[
        ("none", name(&[&[(O, UTF8, b"x")]]), None),
        ("utf8", name(&[&[(CN, UTF8, b"a")]]), Some("a")),
        ("printable", name(&[&[(CN, PRINTABLE, b"a")]]), Some("a")),
        (
            "first of two",
            name(&[&[(CN, UTF8, b"a")], &[(CN, UTF8, b"b")]]),
            Some("a"),
        ),
        (
            "in a multi-valued RDN",
            name(&[&[(OU, UTF8, b"x"), (CN, UTF8, b"a")]]),
            Some("a"),
        ),
        // Only the first CN is read, as before: an unreadable one is not skipped.
        (
            "first unreadable",
            name(&[&[(CN, INTEGER, b"\x01")], &[(CN, UTF8, b"b")]]),
            None,
        ),
        ("BMPString", name(&[&[(CN, BMP_STRING, b"\0a")]]), Some("a")),
        (
            "odd BMPString",
            name(&[&[(CN, BMP_STRING, b"\0a\0")]]),
            None,
        ),
        ("TeletexString", name(&[&[(CN, 0x14, b"a")]]), Some("a")),
        ("invalid UTF-8", name(&[&[(CN, UTF8, b"\xff")]]), None),
        // Not escaped: the CN is the value itself.
        ("specials", name(&[&[(CN, UTF8, b" a,b ")]]), Some(" a,b ")),
    ];
    for (what, der, want) in cases {
        assert_eq!(
            Name::new(der).unwrap().common_name().as_deref(),
            *want,
            "{what}"
        );
    }
}

#[test]
fn malformed_names_refused() {
    let cases: &[(&str, Vec<u8>)] = &[
        ("empty RDN", tlv(SET, &[])),
        ("RDN not a SET", tlv(SEQUENCE, &tlv(SEQUENCE, &[]))),
        (
            "attribute without value",
            tlv(SET, &tlv(SEQUENCE, &tlv(OID, CN))),
        ),
        (
            "attribute with two values",
            tlv(
                SET,
                &tlv(
                    SEQUENCE,
                    &[tlv(OID, CN), tlv(UTF8, b"a"), tlv(UTF8, b"b")].concat(),
                ),
            ),
        ),
        ("empty OID", name(&[&[(&[], UTF8, b"a")]])),
        ("unterminated OID", name(&[&[(&[0x55, 0x84], UTF8, b"a")]])),
        (
            "non-minimal OID arc",
            name(&[&[(&[0x55, 0x80, 0x04], UTF8, b"a")]]),
        ),
        (
            "OID arc over 64 bits",
            name(&[&[(
                &[
                    0x2b, 0x82, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
                ],
                UTF8,
                b"a",
            )]]),
        ),
        (
            "trailing byte",
            [name(&[&[(CN, UTF8, b"a")]]), vec![0]].concat(),
        ),
    ];
    for (what, der) in cases {
        assert!(Name::new(der).is_none(), "{what}");
    }
}

#[test]
fn times() {
    let cases: &[(u8, &str, Option<i64>)] = &[
        (UTC_TIME, "300101000000Z", Some(1_893_456_000)),
        (UTC_TIME, "491231235959Z", Some(2_524_607_999)),
        (UTC_TIME, "500101000000Z", Some(-631_152_000)),
        (UTC_TIME, "700101000000Z", Some(0)),
        (UTC_TIME, "000229000000Z", Some(951_782_400)),
        (GENERALIZED_TIME, "20510615123045Z", Some(2_570_445_045)),
        (GENERALIZED_TIME, "20000229000000Z", Some(951_782_400)),
        (GENERALIZED_TIME, "99991231235959Z", Some(253_402_300_799)),
        // Refused: out of range, no `Z`, offsets, fractions, the wrong length or tag.
        (UTC_TIME, "010229000000Z", None),
        (GENERALIZED_TIME, "21000229000000Z", None),
        (UTC_TIME, "301301000000Z", None),
        (UTC_TIME, "300001000000Z", None),
        (UTC_TIME, "300100000000Z", None),
        (UTC_TIME, "300431000000Z", None),
        (UTC_TIME, "300101240000Z", None),
        (UTC_TIME, "300101006000Z", None),
        (UTC_TIME, "300101000060Z", None),
        (UTC_TIME, "300101000000", None),
        (UTC_TIME, "3001010000Z", None),
        (UTC_TIME, "300101000000+0100", None),
        (UTC_TIME, "3001010000-0Z", None),
        (UTC_TIME, "30010100000 Z", None),
        (GENERALIZED_TIME, "20300101000000.5Z", None),
        (GENERALIZED_TIME, "300101000000Z", None),
        (UTC_TIME, "20300101000000Z", None),
        (UTF8, "300101000000Z", None),
    ];
    for (tag, text, want) in cases {
        let t = Tlv {
            tag: *tag,
            value: text.as_bytes(),
            raw: text.as_bytes(),
        };
        assert_eq!(time(t), *want, "{tag:#x} {text}");
    }
}

#[test]
fn public_keys() {
    let cases = [
        (
            &rcgen::PKCS_ECDSA_P256_SHA256,
            OID_EC_PUBLIC_KEY,
            Some(OID_P256),
        ),
        (
            &rcgen::PKCS_ECDSA_P384_SHA384,
            OID_EC_PUBLIC_KEY,
            Some(OID_P384),
        ),
        (&rcgen::PKCS_ED25519, OID_ED25519, None),
        (&rcgen::PKCS_RSA_SHA256, OID_RSA_ENCRYPTION, None),
    ];
    for (alg, oid, curve) in cases {
        let key = KeyPair::generate_for(alg).unwrap();
        let der = key.subject_public_key_info();
        let spki = Spki::from_der(&der).unwrap();
        assert_eq!(spki.algorithm, oid, "{alg:?}");
        assert_eq!(spki.parameter_oid, curve, "{alg:?}");
        assert_eq!(spki.key, key.public_key_raw(), "{alg:?}");
        assert!(Spki::from_der(&[der.as_slice(), &[0]].concat()).is_none());

        let cert = CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert = Certificate::from_der(cert.der()).unwrap();
        assert_eq!(cert.public_key().key, spki.key, "{alg:?}");
    }
    // Key bits that are not a whole number of bytes.
    let odd = tlv(
        SEQUENCE,
        &[
            tlv(SEQUENCE, &tlv(OID, OID_ED25519)),
            tlv(BIT_STRING, &[1, 0xfe]),
        ]
        .concat(),
    );
    assert!(Spki::from_der(&odd).is_none());
}

#[test]
fn truncated_and_garbage_refused() {
    let der = everything_cert();
    for len in 0..der.len() {
        assert!(Certificate::from_der(&der[..len]).is_none(), "{len}");
        assert!(Spki::from_der(&der[..len]).is_none(), "{len}");
    }
    assert!(Certificate::from_der(&[der.as_slice(), &[0]].concat()).is_none());
    assert!(Certificate::from_der(&[der.as_slice(), &der].concat()).is_none());
    // Every byte changed, three ways: no panic (some changes still parse, as a changed name).
    for i in 0..der.len() {
        for change in [0x00, 0xff, der[i] ^ 0x80, der[i].wrapping_add(1)] {
            let mut bad = der.clone();
            bad[i] = change;
            if let Some(c) = Certificate::from_der(&bad) {
                let _ = (c.subject().to_string(), c.subject_alt_names().count());
            }
        }
    }
    let cases: &[&[u8]] = &[
        b"",
        b"\x30",
        b"\x30\x00",
        b"\x30\x80\x00\x00",         // indefinite length
        b"\x30\x81\x01\x00",         // length not in its shortest form
        b"\x30\x82\x00\x01\x00",     // same
        b"\x30\x84\xff\xff\xff\xff", // past 16 MiB
        b"\x30\x83\xff\xff\xff",     // longer than the input
        b"\x3f\x01\x00",             // high tag number
        b"-----BEGIN CERTIFICATE-----\n",
    ];
    for bytes in cases {
        assert!(Certificate::from_der(bytes).is_none(), "{bytes:?}");
        assert!(Spki::from_der(bytes).is_none(), "{bytes:?}");
    }
    // Pseudo-random bytes (a fixed LCG), each starting as a SEQUENCE would.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..2000 {
        let mut bytes = vec![0x30];
        for _ in 0..(state % 64) {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            bytes.push((state >> 56) as u8);
        }
        let _ = (Certificate::from_der(&bytes), Spki::from_der(&bytes));
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
    }
}

#[test]
fn duplicate_or_malformed_san_refuses_the_certificate() {
    let der = everything_cert();
    // The SAN extension's OID, 2.5.29.17, changed to 2.5.29.18 (issuerAltName): still a
    // certificate, no SAN.
    let at = der
        .windows(5)
        .position(|w| w == [OID, 3, 0x55, 0x1d, 0x11])
        .unwrap();
    let mut other = der.clone();
    other[at + 4] = 0x12;
    let c = Certificate::from_der(&other).unwrap();
    assert_eq!(c.subject_alt_names().count(), 0);
    // A dNSName tag changed to an unknown context tag [9]: refused.
    let at = der
        .windows(16)
        .position(|w| w == [&[0x82, 14][..], b"a.example.test"].concat())
        .unwrap();
    let mut bad = der.clone();
    bad[at] = 0x89;
    assert!(Certificate::from_der(&bad).is_none());
    // Invalid UTF-8 in a dNSName: refused.
    let mut bad = der;
    bad[at + 2] = 0xff;
    assert!(Certificate::from_der(&bad).is_none());
    // Two SAN extensions: refused, whichever a reader would have taken.
    let two = rcgen_cert(|p| {
        p.subject_alt_names = vec![SanType::DnsName("a.test".try_into().unwrap())];
        p.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
            &[2, 5, 29, 17],
            tlv(SEQUENCE, &tlv(0x82, b"b.test")),
        )];
    });
    assert!(Certificate::from_der(&two).is_none());
}

#[test]
fn first_element_ignores_what_follows() {
    assert_eq!(first_element(b"\x30\x00\xff"), Some(&b"\x30\x00"[..]));
    assert_eq!(first_element(b"\x30\x01"), None);
    assert_eq!(first_element(b""), None);
}

#[test]
fn basic_constraints() {
    use rcgen::{BasicConstraints, CustomExtension, IsCa};
    let basic = |content: &[u8]| {
        let mut e = CustomExtension::from_oid_content(&[2, 5, 29, 19], content.to_vec());
        e.set_criticality(true);
        e
    };
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        (
            "CA, no path length",
            rcgen_cert(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)),
            true,
        ),
        (
            "CA, path length 0",
            rcgen_cert(|p| p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0))),
            true,
        ),
        ("no basicConstraints", rcgen_cert(|_| {}), false),
        (
            "cA explicitly FALSE",
            rcgen_cert(|p| p.is_ca = IsCa::ExplicitNoCa),
            false,
        ),
        (
            "cA absent (DEFAULT FALSE)",
            rcgen_cert(|p| p.custom_extensions = vec![basic(&tlv(SEQUENCE, &[]))]),
            false,
        ),
        (
            "basicConstraints that does not read",
            rcgen_cert(|p| p.custom_extensions = vec![basic(&[0x30, 0x05, 0x01])]),
            false,
        ),
        (
            "cA TRUE written as 0x01 (not DER)",
            rcgen_cert(|p| {
                p.custom_extensions = vec![basic(&tlv(SEQUENCE, &tlv(BOOLEAN, &[0x01])))]
            }),
            false,
        ),
        (
            "after a SAN",
            rcgen_cert(|p| {
                p.subject_alt_names = vec![SanType::DnsName("ca.test".try_into().unwrap())];
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            }),
            true,
        ),
    ];
    for (what, der, ca) in cases {
        let cert = Certificate::from_der(&der).unwrap_or_else(|| panic!("{what}: reads"));
        assert_eq!(cert.is_ca(), ca, "{what}");
    }
}

#[test]
fn self_issued() {
    let ca = rcgen_cert(|p| {
        p.distinguished_name.push(DnType::CommonName, "ca");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    });
    assert!(Certificate::from_der(&ca).unwrap().is_self_issued());
    let issuer_key = KeyPair::generate().unwrap();
    let mut ip = CertificateParams::new(Vec::<String>::new()).unwrap();
    ip.distinguished_name.push(DnType::CommonName, "issuer");
    ip.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = rcgen::Issuer::new(ip, issuer_key);
    let key = KeyPair::generate().unwrap();
    let mut lp = CertificateParams::new(Vec::<String>::new()).unwrap();
    lp.distinguished_name.push(DnType::CommonName, "leaf");
    let leaf = lp.signed_by(&key, &issuer).unwrap().der().to_vec();
    let leaf = Certificate::from_der(&leaf).unwrap();
    assert!(!leaf.is_self_issued());
    assert!(!leaf.is_ca());
}
