"""Intel Neural Compressor's view of one ONNX Runtime dynamic-int8 candidate (a ``BaseConfig`` subclass), so that
INC's tuning loop (``neural_compressor.common.base_tuning``) can iterate Multiverse's candidates."""

from __future__ import annotations

from .targets import QuantConfig


def inc_config_class():
    """INC ``BaseConfig`` subclass for ORT dynamic int8 (built lazily: INC is only needed when tuning)."""
    from neural_compressor.common.base_config import DEFAULT_WHITE_LIST, BaseConfig

    class OrtDynamicInt8Config(BaseConfig):
        """One ONNX Runtime dynamic-int8 candidate, as INC's tuning loop sees it."""

        name = "ort_dynamic_int8"
        params_list = ["weight_type", "per_channel", "reduce_range", "op_types", "nodes_to_exclude", "smooth_alpha"]

        def __init__(self, weight_type="int8", per_channel=True, reduce_range=False, op_types=(), nodes_to_exclude=(),
                     smooth_alpha=None, white_list=DEFAULT_WHITE_LIST):
            super().__init__(white_list=white_list)
            self.weight_type, self.per_channel, self.reduce_range = weight_type, per_channel, reduce_range
            self.op_types, self.nodes_to_exclude, self.smooth_alpha = tuple(op_types), tuple(nodes_to_exclude), smooth_alpha
            self._post_init()

        @classmethod
        def register_supported_configs(cls):
            return None

        @classmethod
        def get_config_set_for_tuning(cls):
            return cls()

        @classmethod
        def from_quant_config(cls, q: QuantConfig):
            return cls(q.weight_type, q.per_channel, q.reduce_range, q.op_types, q.nodes_to_exclude, q.smooth_alpha)

        def to_quant_config(self) -> QuantConfig:
            return QuantConfig(weight_type=self.weight_type, per_channel=self.per_channel, reduce_range=self.reduce_range,
                               op_types=self.op_types, nodes_to_exclude=self.nodes_to_exclude,
                               smooth_alpha=self.smooth_alpha)

    return OrtDynamicInt8Config
