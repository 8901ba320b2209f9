fn main() -> Result<(), Box<dyn std::error::Error>> {
    // protoc comes from protoc-bin-vendored so no system protoc is needed.
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    // Every Resource is as large as its largest kind, and a control plane
    // keeps a compiled set per connected proxy: the rarely set policy
    // messages are boxed so a Cluster or RouteRule without them stays small.
    let mut b = tonic_prost_build::configure();
    for path in [
        ".weft.v1.Resource.kind.cluster",
        ".weft.v1.Cluster.lb",
        ".weft.v1.Cluster.limits",
        ".weft.v1.Cluster.outlier",
        ".weft.v1.Cluster.health_check",
        ".weft.v1.Cluster.retry_budget",
        ".weft.v1.RouteRule.mirror",
        ".weft.v1.RouteRule.request_headers",
        ".weft.v1.RouteRule.response_headers",
        ".weft.v1.RouteRule.retry",
    ] {
        b = b.boxed(path);
    }
    // Endpoint labels: a BTreeMap is half the size of an empty HashMap.
    b = b
        .btree_map(".weft.v1.Endpoint.labels")
        .btree_map(".weft.v1.Backend.subset")
        .btree_map(".weft.v1.Instance.labels")
        .btree_map(".weft.v1.Instance.metadata")
        .btree_map(".weft.v1.ListInstancesRequest.labels")
        .btree_map(".weft.v1.EndpointStatus.labels")
        .btree_map(".weft.v1.QueueMessage.headers")
        .bytes(".weft.v1.QueueMessage.payload");
    b.compile_protos(
        &[
            "proto/weft/v1/discovery.proto",
            "proto/weft/v1/resources.proto",
            "proto/weft/v1/admin.proto",
            "proto/weft/v1/identity.proto",
            "proto/weft/v1/ratelimit.proto",
            "proto/weft/v1/registry.proto",
            "proto/weft/v1/queue.proto",
            "proto/etcd/v3.proto",
            "proto/weft/sample/v1/echo.proto",
            "proto/grpc/health/v1/health.proto",
        ],
        &["proto"],
    )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
