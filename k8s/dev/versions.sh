# Versions of the development cluster (k8s/dev/cluster.sh), built from the Go module proxy.
# Volcano v1.14.1 is the newest v1.14 the proxy serves; it was built against Kubernetes v1.34
# (its go.mod: k8s.io/kubernetes v1.34.1) and its API types are the volcano.sh/apis module
# (its go.mod replaces it by a staging folder that module zips leave out; v1.14.0 is served).
# CoreDNS v1.13.2 is the newest release built against client-go v0.34.
KUBERNETES_VERSION=v1.34.5
VOLCANO_VERSION=v1.14.1
VOLCANO_APIS_VERSION=v1.14.0
COREDNS_VERSION=v1.13.2
# The image registry the node pulls from (registry.example.com is mirrored to it).
DISTRIBUTION_VERSION=v3.1.2
