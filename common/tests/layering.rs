//! The library's modules import each other in one direction only, the way data flows: the
//! config at the bottom, the model and the data above it, then the checks that resolve an
//! experiment, and training on top. A `use crate::…` that runs back down the list (or sideways
//! between the model and the data) fails here, naming the file and the line.

use std::fs;
use std::path::{Path, PathBuf};

/// What a leaf module (file helpers, file formats) must not import: any other part.
const LEAF: &[&str] = &[
    "config",
    "model",
    "data",
    "resolve",
    "train",
    "collective",
    "device",
];

/// Each top-level module with the modules it must not import (outside its unit tests).
const FORBIDDEN: &[(&str, &[&str])] = &[
    ("fsutil", LEAF),
    ("npy", LEAF),
    (
        "collective",
        &["config", "model", "data", "resolve", "train", "device"],
    ),
    ("config", &["model", "data", "resolve", "train", "device"]),
    ("model", &["data", "resolve", "train", "device"]),
    ("data", &["model", "resolve", "train", "device"]),
    ("device", &["model", "data", "resolve", "train"]),
    ("resolve", &["train"]),
];

/// The `.rs` files of module `name`: `name.rs` or everything under `name/`.
fn files_of(src: &Path, name: &str) -> Vec<PathBuf> {
    let file = src.join(format!("{name}.rs"));
    if file.is_file() {
        return vec![file];
    }
    let mut files = Vec::new();
    let mut dirs = vec![src.join(name)];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    assert!(
        !files.is_empty(),
        "module {name} has no files under {}",
        src.display()
    );
    files
}

/// The file's text before its unit tests, which may use anything.
fn production_code(text: &str) -> &str {
    text.find("#[cfg(test)]\nmod tests")
        .or_else(|| text.find("#[cfg(test)]\npub(crate) mod tests"))
        .map_or(text, |end| &text[..end])
}

#[test]
fn modules_import_only_what_lies_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut arrows_up = Vec::new();
    for (module, forbidden) in FORBIDDEN {
        for file in files_of(&src, module) {
            let text = fs::read_to_string(&file).expect("readable source");
            for (number, line) in production_code(&text).lines().enumerate() {
                if line.trim_start().starts_with("//") {
                    continue; // doc links may point anywhere
                }
                for target in *forbidden {
                    if line.contains(&format!("crate::{target}::"))
                        || line.contains(&format!("crate::{target};"))
                        || line.contains(&format!("crate::{target}}}"))
                        || line.contains(&format!("crate::{{{target}"))
                    {
                        arrows_up.push(format!(
                            "{}:{}: {module} imports {target}: {}",
                            file.display(),
                            number + 1,
                            line.trim()
                        ));
                    }
                }
            }
        }
    }
    assert!(
        arrows_up.is_empty(),
        "imports against the layering:\n{}",
        arrows_up.join("\n")
    );
}
