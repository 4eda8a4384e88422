//! Syntax checks of the places a job spec names (`base_model`, `data`), run by
//! [`crate::JobSpec::validate`] before a spec reaches any worker: a known scheme, no control
//! characters, a bounded length, an absolute `file://` path, an S3 bucket, well-formed
//! query parameters and a `timeout=` that is a finite number of seconds in range. Whether a
//! local path may be read is the worker's decision (its `--allow-path` list), made when it
//! loads the job.

/// Longest `base_model` or `data` value.
pub const MAX_LOCATION_LEN: usize = 4096;

/// Shortest and longest `timeout=` in a store URL, in seconds (the ledger's store parser
/// applies the same range: `tributary_ledger::store::TIMEOUT_RANGE_SECS`).
pub const TIMEOUT_RANGE_SECS: (f64, f64) = (0.05, 3600.0);

/// Checks one location; the error names `field` and what is wrong.
pub fn check_location(field: &str, value: &str, datanet_ok: bool) -> Result<(), String> {
    let fail = |why: String| Err(format!("{field} {value:?}: {why}"));
    if value.trim().is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if value.len() > MAX_LOCATION_LEN {
        return fail(format!(
            "is {} bytes long; at most {MAX_LOCATION_LEN}",
            value.len()
        ));
    }
    if value.chars().any(char::is_control) {
        return fail("contains a control character".into());
    }
    let Some((scheme, rest)) = value.split_once("://") else {
        return Ok(()); // a local path
    };
    match scheme {
        "s3" => check_s3(rest).or_else(fail),
        "file" if rest.starts_with('/') => check_query_free(rest).or_else(fail),
        "file" => fail("file:// URLs need an absolute path (file:///dir)".into()),
        "memory" => Ok(()),
        "datanet" if datanet_ok => Ok(()),
        _ => {
            let known = if datanet_ok {
                "a path, s3://, file:// or datanet://"
            } else {
                "a path, s3:// or file://"
            };
            fail(format!("unknown scheme `{scheme}://`: use {known}"))
        }
    }
}

fn check_query_free(rest: &str) -> Result<(), String> {
    if rest.contains('?') {
        return Err("file:// URLs take no query parameters".into());
    }
    Ok(())
}

fn check_s3(rest: &str) -> Result<(), String> {
    let (loc, query) = rest.split_once('?').unwrap_or((rest, ""));
    let bucket = loc.split('/').next().unwrap_or_default();
    if bucket.is_empty() {
        return Err("missing bucket name (s3://bucket/prefix)".into());
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(format!("query parameter `{pair}` has no `=`"));
        };
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!(
                "query parameter name `{k}` is not a name (letters, digits, _)"
            ));
        }
        if k == "timeout" {
            check_timeout(v)?;
        }
    }
    Ok(())
}

/// A `timeout=` value: seconds (an optional trailing `s`), finite, within
/// [`TIMEOUT_RANGE_SECS`].
pub fn check_timeout(v: &str) -> Result<f64, String> {
    let (lo, hi) = TIMEOUT_RANGE_SECS;
    let secs: f64 = v
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("query parameter `timeout={v}` is not a number of seconds"))?;
    if !secs.is_finite() || !(lo..=hi).contains(&secs) {
        return Err(format!(
            "query parameter `timeout={v}` is out of range: must be {lo} to {hi} seconds"
        ));
    }
    Ok(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_locations_are_refused_naming_the_field() {
        for (v, want) in [
            ("s3://b/p?timeout=inf", "timeout=inf"),
            ("s3://b/p?timeout=NaN", "out of range"),
            ("s3://b/p?timeout=-3", "out of range"),
            ("s3://b/p?timeout=1e400", "out of range"),
            ("s3://b/p?timeout=x", "not a number"),
            ("s3:///p", "bucket"),
            ("s3://b/p?novalue", "no `=`"),
            ("s3://b/p?a b=1", "not a name"),
            ("file://relative", "absolute"),
            ("ftp://x/y", "unknown scheme"),
            ("datanet://x@1", "unknown scheme"),
            ("dir/\0x", "control character"),
            ("a\nb", "control character"),
        ] {
            let err = check_location("base_model", v, false).unwrap_err();
            assert!(err.starts_with("base_model"), "{v}: {err}");
            assert!(err.contains(want), "{v}: {err}");
        }
        let long = "a".repeat(MAX_LOCATION_LEN + 1);
        assert!(check_location("data", &long, true).is_err());
    }

    #[test]
    fn ordinary_locations_pass() {
        for v in [
            "models/tiny",
            "/abs/dir",
            "s3://bucket/prefix?endpoint=http://127.0.0.1:9000&region=us-east-1&timeout=2.5s",
            "file:///tmp/x",
            "memory://m",
        ] {
            check_location("base_model", v, false).unwrap();
        }
        check_location("data", "datanet://docs@latest", true).unwrap();
    }
}
