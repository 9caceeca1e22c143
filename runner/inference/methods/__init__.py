"""Built-in inference methods, one module per family; each registers its methods in ``runner.inference.registry``."""
