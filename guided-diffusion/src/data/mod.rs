//! Images and data sets: the reference's folder loader and Fashion-MNIST.
