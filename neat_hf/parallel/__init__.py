"""NEAT under sharded training: DeepSpeed ZeRO-3 (`zero3`: gathering partitioned weights, registering the frozen
weight H is computed from) and FSDP2 (`fsdp`: sharding a NeatModel with `fully_shard`; `dtensor`: the DTensor
helpers the layer's forward and merge use)."""
