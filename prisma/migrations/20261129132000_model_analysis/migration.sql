-- Upload analysis runs on the workers as a queued job; the model row says how far it got.
CREATE TYPE "ModelAnalysis" AS ENUM ('pending', 'done', 'failed');

ALTER TABLE "OnnxModel" ADD COLUMN "analysis" "ModelAnalysis" NOT NULL DEFAULT 'pending',
ADD COLUMN "analysisError" TEXT;

-- Models analyzed before this migration (by the API process) have their MACs already.
UPDATE "OnnxModel" SET "analysis" = 'done' WHERE "macs" IS NOT NULL;
