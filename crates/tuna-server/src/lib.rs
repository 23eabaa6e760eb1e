//! tuna-server
