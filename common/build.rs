//! Compiles `proto/*.proto` with protox (pure Rust), so building needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/incept.proto",
        "proto/tf_example.proto",
        "proto/tf_event.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        // Ordered maps: an Example's features then encode in one order, so packed shards are
        // byte-for-byte reproducible.
        .btree_map(".tensorflow.Features.feature")
        .compile_fds(descriptors)?;
    Ok(())
}
