//! Declares the `loom` cfg so `RUSTFLAGS="--cfg loom"` builds pass the
//! workspace's `unexpected_cfgs` lint (the crate takes its lints from the
//! workspace, so the check-cfg cannot live in `[lints.rust]` here).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(loom)");
}
