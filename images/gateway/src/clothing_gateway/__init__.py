"""The gateway: image (URL or bytes) -> preprocessing -> TF Serving -> class scores."""

USER_AGENT = "clothing-gateway/0.1"  # on image downloads and REST calls to the model server
