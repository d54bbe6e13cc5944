//! inplace-upgrade: upgrade container images of running pods in place.
