"""The tensor codec, one concern a module: dtypes (TF's DataType by name), json_in (request JSON by TF Serving's
rules), fastpath (big numeric bodies in C), json_out (response JSON as TF Serving writes it), proto (TensorProto)."""
