//! Compiles the conformance suite's gRPC echo service (protox: no protoc needed).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/grpcecho.proto");
    let fds = protox::compile(["proto/grpcecho.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
