//! tuna-train
