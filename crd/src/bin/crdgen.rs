//! Writes the CRD YAML into `kustomize/base/crds/` (or the directory given as the first argument).
//! `--check` exits non-zero when the committed files differ from the generated ones.

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let check = args.iter().any(|a| a == "--check");
    let dir = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../kustomize/base/crds")
        });
    std::fs::create_dir_all(&dir)?;
    let mut drift = false;
    for (file, yaml) in crd::crd_files() {
        let path = dir.join(&file);
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current == yaml {
            continue;
        }
        if check {
            eprintln!("{} is out of date: run `make crds`", path.display());
            drift = true;
        } else {
            std::fs::write(&path, yaml)?;
            println!("wrote {}", path.display());
        }
    }
    if drift {
        std::process::exit(1);
    }
    Ok(())
}
