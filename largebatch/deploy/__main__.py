"""python -m largebatch.deploy [PATH ...]: validate kustomizations and cluster YAMLs (default: k8s)."""
from largebatch.deploy.validate import main

raise SystemExit(main())
