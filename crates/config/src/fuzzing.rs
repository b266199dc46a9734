//! Entry points of the fuzz targets (`fuzz/`), also replayed over the committed corpus by the
//! tests. Not a stable API.

use sandkit_core::{ErrorKind, Mount};

/// `SANDBOX_VOLUMES` parsing: never panics; every error is `InvalidInput` naming the entry;
/// what parses prints back to something that parses the same.
pub fn volumes(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match Mount::parse_list(&text) {
        Ok(mounts) => {
            for m in mounts {
                let again =
                    Mount::parse(&m.to_string()).expect("a parsed mount prints back parseable");
                assert_eq!(again, m);
            }
        }
        Err(e) => assert_eq!(e.kind(), ErrorKind::InvalidInput),
    }
}

/// The loader: the first line of `data` is environment `KEY=VALUE` pairs separated by `;`,
/// the rest is the TOML file. Never panics; errors are `InvalidInput` or `NotFound`.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (env_line, toml) = text.split_once('\n').unwrap_or((&text, ""));
    let env: Vec<(String, String)> = env_line
        .split(';')
        .filter_map(|p| p.split_once('='))
        .filter(|(k, _)| k != &"SANDKIT_CONFIG")
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match crate::Config::builder().toml(toml).env_vars(env).load() {
        Ok(c) => {
            let _ = c.to_toml_with_sources();
            let _ = c.mounts();
        }
        Err(e) => assert!(
            matches!(e.kind(), ErrorKind::InvalidInput | ErrorKind::NotFound),
            "{e}"
        ),
    }
}
