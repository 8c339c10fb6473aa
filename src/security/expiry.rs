//! When certificates expire: the `notAfter` of X.509 certificates in PEM
//! files, read with a small DER walker (pure; no file is read here). The
//! daemon reads the TLS files of the config at each load (start, SIGHUP:
//! when nats-server and the API take them up too) and /metrics serves the
//! earliest expiry of each file, so an alert fires before a certificate
//! in use runs out.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// DER tags met on the way to `validity`.
const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// One DER element: its tag, its contents, and what follows it.
fn element(der: &[u8]) -> Result<(u8, &[u8], &[u8]), String> {
    let (&tag, rest) = der.split_first().ok_or("truncated: no tag")?;
    let (&first, rest) = rest.split_first().ok_or("truncated: no length")?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return Err(format!("a length of {n} bytes"));
        }
        let len = rest[..n].iter().fold(0usize, |l, &b| l << 8 | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err(format!(
            "truncated: {len} bytes announced, {} there",
            rest.len()
        ));
    }
    Ok((tag, &rest[..len], &rest[len..]))
}

/// The contents of an element that must have tag `want`, and the rest.
fn expect<'a>(der: &'a [u8], want: u8, what: &str) -> Result<(&'a [u8], &'a [u8]), String> {
    let (tag, body, rest) = element(der)?;
    if tag != want {
        return Err(format!("{what}: tag {tag:#04x}, expected {want:#04x}"));
    }
    Ok((body, rest))
}

/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version
/// OPTIONAL, serialNumber, signature, issuer, validity SEQUENCE {
/// notBefore, notAfter }, ... }, ... }: notAfter as Unix seconds.
pub fn not_after(der: &[u8]) -> Result<i64, String> {
    let (certificate, _) = expect(der, SEQUENCE, "certificate")?;
    let (mut tbs, _) = expect(certificate, SEQUENCE, "tbsCertificate")?;
    if tbs.first() == Some(&VERSION) {
        tbs = element(tbs)?.2;
    }
    let (_, rest) = expect(tbs, INTEGER, "serialNumber")?;
    let (_, rest) = expect(rest, SEQUENCE, "signature")?;
    let (_, rest) = expect(rest, SEQUENCE, "issuer")?;
    let (validity, _) = expect(rest, SEQUENCE, "validity")?;
    let (_, _, after) = element(validity)?;
    let (tag, time, _) = element(after)?;
    time_of(tag, time)
}

/// UTCTime (YYMMDDHHMMSSZ: 50-99 are 19YY) or GeneralizedTime
/// (YYYYMMDDHHMMSSZ), the forms RFC 5280 allows, as Unix seconds.
fn time_of(tag: u8, text: &[u8]) -> Result<i64, String> {
    let shown = || String::from_utf8_lossy(text).into_owned();
    let digits = match (tag, text.split_last()) {
        (UTC_TIME, Some((b'Z', d))) if d.len() == 12 => d,
        (GENERALIZED_TIME, Some((b'Z', d))) if d.len() == 14 => d,
        _ => {
            return Err(format!(
                "notAfter {:?}: not a UTCTime or GeneralizedTime in Z",
                shown()
            ))
        }
    };
    if !digits.iter().all(u8::is_ascii_digit) {
        return Err(format!("notAfter {:?}: not all digits", shown()));
    }
    let n = |at: usize, len: usize| {
        digits[at..at + len]
            .iter()
            .fold(0i64, |v, d| v * 10 + (d - b'0') as i64)
    };
    let (year, at) = if tag == UTC_TIME {
        let yy = n(0, 2);
        (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
    } else {
        (n(0, 4), 4)
    };
    let (month, day) = (n(at, 2), n(at + 2, 2));
    let (hour, minute, second) = (n(at + 4, 2), n(at + 6, 2), n(at + 8, 2));
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(format!("notAfter {:?}: not a date and time", shown()));
    }
    Ok(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// How far ahead a certificate's expiry is worth a warning when the config
/// is loaded: the alert rules' warning threshold.
pub const WARN_AHEAD_SECS: i64 = 21 * 86_400;

/// What to say when the config is loaded (start, reload, check-config)
/// about the certificates of `key` (`path`), which run out at `not_after`,
/// at Unix time `now`: nothing while they have more than WARN_AHEAD_SECS.
pub fn warning(key: &str, path: &str, not_after: i64, now: i64) -> Option<String> {
    let left = not_after - now;
    let when = match left {
        l if l >= WARN_AHEAD_SECS => return None,
        l if l <= 0 => {
            let ago = -l / 86_400;
            return Some(format!(
                "{key}: {path} holds a certificate that expired {}: TLS clients refuse it; renew it, then reload",
                match ago {
                    0 => "less than a day ago".to_string(),
                    1 => "1 day ago".to_string(),
                    n => format!("{n} days ago"),
                }
            ));
        }
        l if l < 86_400 => "within a day".to_string(),
        l if l < 2 * 86_400 => "in 1 day".to_string(),
        l => format!("in {} days", l / 86_400),
    };
    Some(format!(
        "{key}: {path} holds a certificate that expires {when}: renew it, then reload"
    ))
}

/// The earliest notAfter of the certificates in a PEM file (a chain, or a
/// bundle of CAs): when the first of them, and so the file, stops working.
pub fn earliest_not_after(pem: &[u8]) -> Result<i64, String> {
    let mut earliest = None;
    for der in CertificateDer::pem_slice_iter(pem) {
        let der = der.map_err(|e| format!("not a PEM certificate file: {e}"))?;
        let t = not_after(&der)?;
        earliest = Some(earliest.map_or(t, |e: i64| e.min(t)));
    }
    earliest.ok_or_else(|| "holds no PEM certificate".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{date_time_ymd, CertificateParams, KeyPair};

    fn pem_until(y: i32, m: u8, d: u8) -> String {
        let mut p = CertificateParams::new(vec!["localhost".into()]).unwrap();
        p.not_before = date_time_ymd(2020, 1, 1);
        p.not_after = date_time_ymd(y, m, d);
        p.self_signed(&KeyPair::generate().unwrap()).unwrap().pem()
    }

    #[test]
    fn not_after_is_read_from_a_certificate_as_unix_seconds() {
        // 2031-03-04T00:00:00Z; UTCTime (before 2050) in the certificate.
        assert_eq!(
            earliest_not_after(pem_until(2031, 3, 4).as_bytes()),
            Ok(1_930_348_800)
        );
        // 2061-01-01T00:00:00Z: GeneralizedTime (2050 and after).
        assert_eq!(
            earliest_not_after(pem_until(2061, 1, 1).as_bytes()),
            Ok(2_871_763_200)
        );
    }

    #[test]
    fn a_bundle_expires_with_its_first_certificate_to_expire() {
        let bundle = [
            pem_until(2040, 6, 1),
            pem_until(2030, 1, 1),
            pem_until(2035, 1, 1),
        ]
        .concat();
        assert_eq!(earliest_not_after(bundle.as_bytes()), Ok(1_893_456_000));
    }

    #[test]
    fn what_is_no_certificate_is_an_error_not_a_date() {
        assert!(earliest_not_after(b"").is_err());
        assert!(earliest_not_after(
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        )
        .is_err());
        let good = pem_until(2031, 3, 4);
        let der = CertificateDer::from_pem_slice(good.as_bytes()).unwrap();
        for cut in [0, 1, 2, 10, 40, der.len() / 2] {
            assert!(not_after(&der[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = der.to_vec();
        bad[0] = 0x31;
        assert!(not_after(&bad).is_err());
    }

    #[test]
    fn a_certificate_near_or_past_its_expiry_is_a_warning() {
        let now = 1_900_000_000;
        let day = 86_400;
        let w = |left: i64| warning("api.tls.cert_file", "/c.pem", now + left, now);
        assert_eq!(w(WARN_AHEAD_SECS), None);
        assert_eq!(w(400 * day), None);
        assert_eq!(
            w(20 * day + 5).as_deref(),
            Some("api.tls.cert_file: /c.pem holds a certificate that expires in 20 days: renew it, then reload")
        );
        assert!(w(day + 1).unwrap().contains("expires in 1 day:"));
        assert!(w(60).unwrap().contains("expires within a day:"));
        assert!(w(0)
            .unwrap()
            .contains("expired less than a day ago: TLS clients refuse it"));
        assert!(w(-day).unwrap().contains("expired 1 day ago"));
        assert!(w(-3 * day - 7).unwrap().contains("expired 3 days ago"));
    }

    #[test]
    fn times_in_both_forms_and_the_calendar() {
        assert_eq!(time_of(UTC_TIME, b"700101000000Z"), Ok(0));
        assert_eq!(time_of(UTC_TIME, b"491231235959Z"), Ok(2_524_607_999));
        assert_eq!(time_of(UTC_TIME, b"500101000000Z"), Ok(-631_152_000));
        assert_eq!(
            time_of(GENERALIZED_TIME, b"20000229120000Z"),
            Ok(951_825_600)
        );
        assert_eq!(
            time_of(GENERALIZED_TIME, b"99991231235959Z"),
            Ok(253_402_300_799)
        );
        for bad in [
            &b"20000229120000"[..],
            b"2000022912000Z",
            b"20001329120000Z",
            b"2000022912000xZ",
        ] {
            assert!(time_of(GENERALIZED_TIME, bad).is_err(), "{bad:?}");
        }
        assert!(time_of(0x04, b"700101000000Z").is_err());
    }
}
