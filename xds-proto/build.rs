fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protoc comes from protoc-bin-vendored so no system protoc is needed.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure().compile_protos(
        &[
            "proto/weft/v1/discovery.proto",
            "proto/weft/v1/resources.proto",
            "proto/weft/v1/admin.proto",
            "proto/weft/v1/identity.proto",
            "proto/weft/v1/ratelimit.proto",
            "proto/weft/sample/v1/echo.proto",
            "proto/grpc/health/v1/health.proto",
        ],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
