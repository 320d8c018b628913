//! Generates the `isoflow.v1` messages and services with protoc (from the
//! `protobuf-compiler` package, or `PROTOC`).

const SECRET_MESSAGES: [&str; 7] = [
    "isoflow.v1.BearerCredential",
    "isoflow.v1.BasicCredential",
    "isoflow.v1.HeaderCredential",
    "isoflow.v1.QueryCredential",
    "isoflow.v1.RotateCredentialRequest",
    "isoflow.v1.OAuth2Credential",
    "isoflow.v1.IssuedToken",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["isoflow/v1/api.proto", "isoflow/v1/cluster.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    // Messages that carry a secret get a Debug that hides it (src/lib.rs),
    // so no `{:?}` of a request ever prints one.
    tonic_prost_build::configure()
        .skip_debug(SECRET_MESSAGES)
        .compile_protos(&protos, &["."])?;
    Ok(())
}
