//! Generates the `isoflow.v1` messages and services with protoc (from the
//! `protobuf-compiler` package, or `PROTOC`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["isoflow/v1/api.proto", "isoflow/v1/cluster.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure().compile_protos(&protos, &["."])?;
    Ok(())
}
