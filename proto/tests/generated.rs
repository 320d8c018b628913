//! The Rust code generated from `isoflow/**/*.proto` is committed under
//! `src/gen`, so that building the client needs no `protoc`. This test
//! generates it again with protoc (Debian's `protobuf-compiler`, or
//! `PROTOC`) and fails when the committed code is not what the `.proto`
//! files give; `ISOFLOW_BLESS=1` writes the new code instead.

use std::path::Path;

/// Messages that carry a secret get a Debug that hides it (src/lib.rs), so
/// no `{:?}` of a request ever prints one.
const SECRET_MESSAGES: [&str; 7] = [
    "isoflow.v1.BearerCredential",
    "isoflow.v1.BasicCredential",
    "isoflow.v1.HeaderCredential",
    "isoflow.v1.QueryCredential",
    "isoflow.v1.RotateCredentialRequest",
    "isoflow.v1.OAuth2Credential",
    "isoflow.v1.IssuedToken",
];

const PROTOS: [&str; 2] = ["isoflow/v1/api.proto", "isoflow/cluster/v1/cluster.proto"];

/// The files protoc writes, one per package.
const GENERATED: [&str; 2] = ["isoflow.v1.rs", "isoflow.cluster.v1.rs"];

#[test]
fn the_committed_generated_code_is_what_the_protos_give() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().expect("a temporary directory");
    let protos = PROTOS.map(|p| root.join(p));
    tonic_prost_build::configure()
        .out_dir(out.path())
        .emit_rerun_if_changed(false)
        .skip_debug(SECRET_MESSAGES)
        .compile_protos(&protos, &[root.to_path_buf()])
        .expect("protoc compiles the .proto files");
    let bless = std::env::var_os("ISOFLOW_BLESS").is_some();
    let mut stale = Vec::new();
    for file in GENERATED {
        let fresh = std::fs::read_to_string(out.path().join(file)).expect("generated file");
        let committed_path = root.join("src/gen").join(file);
        let committed = std::fs::read_to_string(&committed_path).unwrap_or_default();
        if fresh != committed {
            if bless {
                std::fs::write(&committed_path, fresh).expect("write generated code");
            } else {
                stale.push(file);
            }
        }
    }
    assert!(
        stale.is_empty(),
        "proto/src/gen/{stale:?} differ from what the .proto files give: run \
         `ISOFLOW_BLESS=1 cargo test --workspace --test generated` and commit the result"
    );
}
