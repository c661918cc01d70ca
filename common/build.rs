//! Compiles `proto/*.proto` with protox (pure Rust), so building needs no `protoc`; with the
//! `libtorch` feature, also makes this crate's tests find libtorch at run time (rpath) and hands
//! its folder to the binaries' build scripts.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/incept.proto",
        "proto/tf_example.proto",
        "proto/tf_event.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    libtorch_rpath();
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        // Ordered maps: an Example's features then encode in one order, so packed shards are
        // byte-for-byte reproducible.
        .btree_map(".tensorflow.Features.feature")
        .compile_fds(descriptors)?;
    Ok(())
}

/// The folder torch-sys linked libtorch from (its `libtorch_lib`), written into this crate's
/// test binaries as an rpath and passed on as `DEP_INCEPT_COMMON_LIBTORCH_LIB`, so nobody needs
/// `LD_LIBRARY_PATH` to run a libtorch build.
fn libtorch_rpath() {
    if std::env::var_os("CARGO_FEATURE_LIBTORCH").is_none() {
        return;
    }
    if let Ok(folder) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{folder}");
        println!("cargo:libtorch_lib={folder}");
    }
}
