//! The e2e world's env files (`endpoints.env`, `pvesim.env`, `nfsd.env`, `env`), read for the tests
//! that run against the world (feature `test-doubles`).

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

/// The variables of the shell env file `file` whose names start with `prefix` (`""`: all). The file
/// is sourced by bash, which undoes the scripts' `printf %q` quoting; a file bash cannot source
/// fails the test.
pub fn source(file: &Path, prefix: &str) -> HashMap<String, String> {
    let out = Command::new("bash")
        .arg("-c")
        .arg("set -a; source \"$1\"; env -0")
        .arg("_")
        .arg(file)
        .output()
        .expect("bash runs");
    assert!(out.status.success(), "sourcing {}", file.display());
    out.stdout
        .split(|b| *b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok()?.split_once('='))
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn quoted_values_come_back_as_written_and_the_prefix_filters() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.env");
        std::fs::write(
            &file,
            "export VRG_A='a b'\nexport VRG_B=x\\ y\nexport OTHER=1\n",
        )
        .unwrap();
        let env = super::source(&file, "VRG_");
        assert_eq!(env.get("VRG_A").map(String::as_str), Some("a b"));
        assert_eq!(env.get("VRG_B").map(String::as_str), Some("x y"));
        assert!(!env.contains_key("OTHER"));
    }
}
