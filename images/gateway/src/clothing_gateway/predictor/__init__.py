"""The gateway's side of TF Serving: `base.Predictor` (deadlines, retries, readiness, the contract check) with one
module per transport, `grpc_api` (the default) and `rest_api` (KServe's predictor); `signature` holds the pure
functions that compare the contract with the served signatures."""
