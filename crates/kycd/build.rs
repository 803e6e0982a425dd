//! Sets `KYCD_GIT_REVISION` for `kycd --version` (and the build-info
//! metric): the value of `KYCD_GIT_REVISION` in the build's environment
//! when a packager sets it, else `git rev-parse --short=12 HEAD`, with
//! `-dirty` when tracked files differ from it, else `unknown` (no git, or
//! not built from a checkout: a source tarball, say). Works from a git
//! worktree, whose `.git` is a file.
//!
//! Cargo reruns this when HEAD moves (the HEAD file, the branch's ref, the
//! packed refs) or the index changes; an edit to a tracked file that is not
//! staged shows as `-dirty` at the next rerun, not at once.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=KYCD_GIT_REVISION");
    println!("cargo:rerun-if-changed=build.rs");
    let revision = match std::env::var("KYCD_GIT_REVISION") {
        Ok(v) if !v.trim().is_empty() => v.trim().to_owned(),
        _ => from_git().unwrap_or_else(|| "unknown".to_owned()),
    };
    println!("cargo:rustc-env=KYCD_GIT_REVISION={revision}");
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8(out.stdout).ok()?.trim().to_owned())
}

fn from_git() -> Option<String> {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let absolute = |p: String| {
        let p = PathBuf::from(p);
        if p.is_absolute() {
            p
        } else {
            dir.join(p)
        }
    };
    // In a worktree, HEAD is in the worktree's git dir and the refs in the
    // common one.
    let git_dir = absolute(git(&dir, &["rev-parse", "--git-dir"])?);
    let common = absolute(git(&dir, &["rev-parse", "--git-common-dir"])?);
    let head = git_dir.join("HEAD");
    let mut watched = vec![
        head.clone(),
        git_dir.join("index"),
        common.join("packed-refs"),
    ];
    if let Ok(text) = std::fs::read_to_string(&head) {
        if let Some(reference) = text.trim().strip_prefix("ref: ") {
            watched.push(common.join(reference));
        }
    }
    for path in watched.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let revision = git(&dir, &["rev-parse", "--short=12", "HEAD"])?;
    let dirty = git(&dir, &["status", "--porcelain", "--untracked-files=no"])
        .is_some_and(|s| !s.is_empty());
    Some(if dirty {
        format!("{revision}-dirty")
    } else {
        revision
    })
}
