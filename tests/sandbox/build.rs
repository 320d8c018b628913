//! Gives this package's program and tests an rpath to libnode (see
//! sandbox/build.rs), so they run without LD_LIBRARY_PATH.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_ISOFLOW_V8_LIBDIR");
    if let Some(dir) = std::env::var_os("DEP_ISOFLOW_V8_LIBDIR") {
        let dir = dir.to_string_lossy();
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
