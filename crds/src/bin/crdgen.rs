//! Writes the generated CRD manifests to `crds/manifests/` (or the directory given),
//! or with `--check` fails when the checked-in files differ from what would be written.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut check = false;
    let mut dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/manifests"));
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                eprintln!("usage: crdgen [--check] [OUTPUT_DIR]");
                return ExitCode::SUCCESS;
            }
            other => dir = PathBuf::from(other),
        }
    }
    let mut drift = false;
    for (file, crd) in waypoint_crds::crd::all() {
        let path = dir.join(file);
        let yaml = match waypoint_crds::crd::to_yaml(&crd) {
            Ok(yaml) => yaml,
            Err(e) => {
                eprintln!("error: cannot serialize {file}: {e}");
                return ExitCode::FAILURE;
            }
        };
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                eprintln!(
                    "drift: {} differs from the generated CRD; run crdgen",
                    path.display()
                );
                drift = true;
            }
        } else if let Err(e) = std::fs::write(&path, yaml) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        } else {
            eprintln!("wrote {}", path.display());
        }
    }
    if drift {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
