fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=telemetry.proto");
    tonic_prost_build::configure().compile_protos(&["telemetry.proto"], &["."])?;
    Ok(())
}
