"""Apache TVM backend: `build` (Relax + MetaSchedule, cross-linking), `tune`, `remote` (RPC boards), `run`."""
