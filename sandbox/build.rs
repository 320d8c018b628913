//! Builds the C++ bridge to V8 (`cpp/v8_bridge.cc`) against Debian's
//! libnode108 when the `v8` feature is on.
//!
//! libnode is found through `ISOFLOW_LIBNODE_DIR` (the folder `dpkg -x`
//! extracted `libnode108` and `libnode-dev` into) or, by default, the
//! workspace's `.deps/libnode`, which `deploy/scripts/setup.sh` fills.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=ISOFLOW_LIBNODE_DIR");
    if std::env::var_os("CARGO_FEATURE_V8").is_some() {
        build_v8_bridge();
    }
}

fn build_v8_bridge() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = std::env::var_os("ISOFLOW_LIBNODE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../.deps/libnode"));
    let include = root.join("usr/include/node");
    let lib = root.join("usr/lib/x86_64-linux-gnu");
    if !include.join("v8.h").is_file() || !lib.join("libnode.so.108").is_file() {
        panic!(
            "\n\nlibnode (V8) not found in {}: run `deploy/scripts/setup.sh` to fetch it \
             (or set ISOFLOW_LIBNODE_DIR to a folder where libnode108 and libnode-dev were \
             extracted with dpkg -x), or build without V8: --no-default-features --features quickjs\n\n",
            root.display()
        );
    }
    let lib = canonical(&lib);
    let include = canonical(&include);

    // The library's absolute path ends up in the link line and the rpath.
    // Cargo does not fingerprint a checkout's location, so a target folder
    // shared by checkouts (CI's cache) would keep pointing at one that is
    // gone: watching the file reruns this script when it disappears.
    println!(
        "cargo:rerun-if-changed={}",
        lib.join("libnode.so.108").display()
    );
    println!("cargo:rerun-if-changed=cpp/v8_bridge.cc");
    println!("cargo:rerun-if-changed=cpp/v8_bridge.h");
    cc::Build::new()
        .cpp(true)
        .compiler("g++")
        .std("c++17")
        .file("cpp/v8_bridge.cc")
        .include(&include)
        .opt_level(2)
        // libnode was built without pointer compression and with these; see
        // ../shared/ENVIRONMENT.md for the "build configuration mismatch".
        .define("V8_DEPRECATION_WARNINGS", None)
        .define("V8_IMMINENT_DEPRECATION_WARNINGS", None)
        .flag("-pthread")
        .flag("-fno-rtti")
        .flag("-Wno-unused-parameter")
        .warnings(true)
        .compile("isoflow_v8_bridge");

    // libnode.so needs the unversioned link name; setup.sh creates it, but a
    // hand-extracted folder may only have the versioned file.
    let unversioned = lib.join("libnode.so");
    if !unversioned.exists() {
        let _ = std::os::unix::fs::symlink("libnode.so.108", &unversioned);
    }
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=node");
    // The engine's own tests and benches find libnode at run time without
    // LD_LIBRARY_PATH; binaries of other crates read `DEP_ISOFLOW_V8_LIBDIR`
    // in their build script and set the same rpath (see node/build.rs).
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    println!("cargo:libdir={}", lib.display());
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_owned())
}
