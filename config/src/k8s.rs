//! Kubernetes versions piha knows how to install and configure.
