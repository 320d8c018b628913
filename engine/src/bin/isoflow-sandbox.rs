//! The sandbox process, as a program of its own: what an engine started by
//! a program other than `isoflow` runs its code steps in (see
//! `Program::beside_this_executable`). `isoflow sandbox-process` is the same
//! thing inside the `isoflow` binary.

fn main() -> std::process::ExitCode {
    isoflow_sandbox::process::main(std::env::args().skip(1))
}
