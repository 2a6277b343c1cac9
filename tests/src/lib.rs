//! Test support for anycast-lb.
