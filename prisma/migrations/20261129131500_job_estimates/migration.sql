-- The pre-queue compute estimate of each job, summed per tenant over the last hour for the compute quota.
-- AlterTable
ALTER TABLE "Job" ADD COLUMN "estimatedComputeSeconds" DOUBLE PRECISION;
