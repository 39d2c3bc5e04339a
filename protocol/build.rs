//! Compiles the .proto files with protox (pure Rust), so building Cohort
//! needs no `protoc` on the machine.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/cohort/v1/cohort.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"])?;
    // Chunks are `bytes::Bytes`, so one encoded body is sliced for every
    // hospital that receives it instead of copied per hospital.
    tonic_prost_build::configure()
        .bytes(".cohort.v1.Chunk.data")
        .compile_fds(descriptors)?;
    Ok(())
}
