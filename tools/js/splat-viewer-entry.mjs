// The report's splat viewer: Spark (a three.js renderer of 3D Gaussian splats) with three.js and its
// OrbitControls, bundled by vendor.sh into one script with no imports, so eval-report.html can
// inline it and work offline from the one file. The page's own script (report.py) drives it.
import * as THREE from "three";
import { OrbitControls } from "three/examples/jsm/controls/OrbitControls.js";
import { SparkRenderer, SplatMesh } from "@sparkjsdev/spark";

window.prolificSplatViewer = { THREE, OrbitControls, SparkRenderer, SplatMesh };
