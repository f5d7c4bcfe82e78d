"""Intel Neural Compressor's view of Multiverse's candidates, so that INC's tuning loop
(``neural_compressor.common.base_tuning``) can iterate them: one ``BaseConfig`` subclass per kind of candidate
(ONNX Runtime dynamic int8 :class:`multiverse.targets.QuantConfig`; OpenVINO + NNCF static int8
``multiverse.ovquant.OvInt8Config``), whose parameters are the pydantic model's fields."""

from __future__ import annotations

import functools
import inspect

from pydantic import BaseModel


@functools.lru_cache(maxsize=None)
def _inc_class(model_cls: type[BaseModel], name: str):
    """An INC ``BaseConfig`` subclass named ``name`` whose parameters are ``model_cls``'s fields (built lazily: INC
    is only needed when tuning). INC reads a parameter's default from ``__init__``'s signature, so it is set."""
    from neural_compressor.common.base_config import DEFAULT_WHITE_LIST, BaseConfig

    fields = dict(model_cls.model_fields)

    def __init__(self, white_list=DEFAULT_WHITE_LIST, **params):
        BaseConfig.__init__(self, white_list=white_list)
        for key, info in fields.items():
            setattr(self, key, params.get(key, info.default))
        self._post_init()

    __init__.__signature__ = inspect.Signature(
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
        + [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=f.default) for k, f in fields.items()]
        + [inspect.Parameter("white_list", inspect.Parameter.KEYWORD_ONLY, default=DEFAULT_WHITE_LIST)])

    def to_config(self) -> BaseModel:
        return model_cls(**{k: getattr(self, k) for k in fields})

    return type(f"Inc{model_cls.__name__}", (BaseConfig,), {
        "name": name, "params_list": list(fields), "__init__": __init__, "to_config": to_config,
        "register_supported_configs": classmethod(lambda cls: None),
        "get_config_set_for_tuning": classmethod(lambda cls: cls()),
        "__doc__": f"One {model_cls.__name__} candidate, as INC's tuning loop sees it."})


def to_inc(config: BaseModel):
    """The INC ``BaseConfig`` of a candidate config (``QuantConfig`` or ``OvInt8Config``); ``.to_config()`` returns
    an equal pydantic config."""
    name = "ort_dynamic_int8" if type(config).__name__ == "QuantConfig" else "openvino_static_int8"
    return _inc_class(type(config), name)(**config.model_dump())
