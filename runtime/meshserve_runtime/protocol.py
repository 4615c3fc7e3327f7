"""Names the services agree on beyond what the .proto files say."""

from __future__ import annotations

#: ModelInfer request parameter carrying the run id of the preprocessor that made the
#: input tensor; the model service refuses a tensor from another run (skew guard).
PREPROCESSOR_RUN_ID_PARAMETER = "meshserve.preprocessor_run_id"

#: ModelInfer response parameter with the run id of the model that answered.
MODEL_RUN_ID_PARAMETER = "meshserve.model_run_id"

#: Health names (fully qualified gRPC service names) that gate each service's readiness.
GATEWAY_HEALTH_NAME = "meshserve.v1.PredictionService"
FEATURES_HEALTH_NAME = "meshserve.v1.FeatureService"
PREPROCESS_HEALTH_NAME = "meshserve.v1.PreprocessService"
MODEL_HEALTH_NAME = "inference.GRPCInferenceService"

#: ModelInfer response parameter with the registry alias the model was loaded from.
MODEL_ALIAS_PARAMETER = "meshserve.model_alias"

#: Start of the model's FAILED_PRECONDITION message when the skew guard refuses a tensor;
#: the gateway retries those (a hot reload in progress), not other FAILED_PRECONDITIONs.
SKEW_GUARD_MESSAGE_PREFIX = "skew guard:"

#: Trailing metadata of the skew guard's refusal, once per model version held: the run id
#: of the current version, then of the previous one (if any). The gateway asks preprocess
#: for one of those runs' preprocessors next (TransformRequest.run_id), so a release both
#: services still hold answers even when one side's new version was refused (a one-sided
#: reload failure).
MODEL_RUN_ID_METADATA_KEY = "x-meshserve-model-run-id"
