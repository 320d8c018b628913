//! Gives the engine's own binaries, tests and benchmarks an rpath to libnode
//! when the sandbox crate was built with V8, so they run without
//! LD_LIBRARY_PATH (see sandbox/build.rs).

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_ISOFLOW_V8_LIBDIR");
    if let Some(dir) = std::env::var_os("DEP_ISOFLOW_V8_LIBDIR") {
        let dir = dir.to_string_lossy();
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
